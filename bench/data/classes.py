"""Question families for the near-miss and paraphrase classes of issue 13, written for this project.

Near-miss classes (a pair asks two different things; a cache hit would serve a wrong answer):
- ``direction``: the same two things in the other order ("from German to French" / "from French to German",
  "A owes B" / "B owes A", "10 divided by 4" / "4 divided by 10", "100 USD in EUR" / "100 EUR in USD");
- ``symbol``: code, commands, expressions or patterns that differ in one operator or symbol (``a << 2`` /
  ``a >> 2``, ``rm -r`` / ``rm -f``, ``\\d+`` / ``\\w+``, ``'$HOME'`` / ``"$HOME"``);
- ``attribute``: one attribute word (gluten-free / dairy-free, hard / soft, formal / casual, their / there);
- ``role``: a near-synonym entity or relation (the capital / the largest city, author / publisher,
  CEO / founder, boiling / melting point).

Paraphrase classes (same question; a hit is right):
- ``reword``: restructured sentences ("Who is the author of X?" / "Who wrote X?");
- ``abbreviation``: JS / JavaScript, DB / database, NYC / New York City;
- ``number_words``: "a cup" / "one cup" / "1 cup", "five-year-old" / "5 year old";
- ``units``: currency and unit spellings ("$100 in euros" / "100 USD to EUR");
- ``code``: the same expression or command asked about in other words;
- ``natural``: freely reworded everyday questions, several phrasings each written by hand.

Each family is a list of phrasings with slots; ``make_pairs.py`` draws pairs from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Family:
    topic: str
    near: str | None                 # the near-miss class a changed value makes, or None (paraphrases only)
    positive: str                    # the paraphrase class of two phrasings with the same value
    phrasings: list[str]             # with {x} (the slot) and optionally {y} (a context both sides share)
    values: list[list[str]]          # each value: its spellings (a paraphrase may use any two)
    contexts: list[str] = field(default_factory=lambda: [""])
    swap: bool = False               # direction: values are "a|b"; the near miss is "b|a"
    mutate: dict[str, list[str]] = field(default_factory=dict)   # symbol: token -> its confusable tokens


def _v(*values: str) -> list[list[str]]:
    return [[v] for v in values]


LANGUAGES = _v("German", "French", "Spanish", "Italian", "Japanese", "Portuguese", "Dutch", "Korean", "Polish")
CURRENCIES = ["US dollars", "euros", "British pounds", "Japanese yen", "Swiss francs", "Canadian dollars",
              "Indian rupees"]
CITIES = ["London", "Paris", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Amsterdam", "Lisbon", "Dublin"]
PEOPLE = ["Alice", "Bob", "Carol", "Dave", "Emma", "Frank", "Grace", "Henry", "Ivan", "Julia"]
TECH = ["Python", "JavaScript", "TypeScript", "Java", "Kotlin", "Go", "Rust", "Ruby", "PHP", "Swift"]


def _pairs(pool: list[str]) -> list[list[str]]:
    return [[f"{a}|{b}"] for a in pool for b in pool if a != b]


def _unit_pairs(groups: list[list[str]]) -> list[list[str]]:
    return [[f"{a}|{b}"] for g in groups for a in g for b in g if a != b]


DIRECTION = [
    Family("language", "direction", "reword", [
        "Translate this sentence from {a} to {b}.", "Please translate the following text from {a} into {b}.",
        "Can you translate this paragraph from {a} to {b}?", "I need this translated from {a} to {b}.",
        "Translate to {b} from {a}, please.", "Give me a {a} to {b} translation of this text."],
        _pairs([v[0] for v in LANGUAGES]), swap=True),
    Family("units", "direction", "units", [
        "How do I convert {a} to {b}?", "What's the formula to convert {a} into {b}?",
        "Formula for going from {a} to {b}?", "How can I turn a value in {a} into {b}?",
        "Convert {a} to {b}: what is the formula?"],
        _unit_pairs([["Celsius", "Fahrenheit", "Kelvin"], ["kilometers", "miles", "nautical miles"],
                     ["kilograms", "pounds", "stones"], ["liters", "gallons", "cups"], ["inches", "centimeters"]]),
        swap=True),
    Family("finance", "direction", "units", [
        "What is the exchange rate from {a} to {b}?", "What's today's {a} to {b} exchange rate?",
        "How is the exchange rate from {a} to {b} today?", "Current rate for changing {a} into {b}?",
        "Exchange rate, {a} to {b}?"],
        _pairs(CURRENCIES), swap=True),
    Family("finance", "direction", "units", [
        "How much is {y} {a} in {b}?", "Convert {y} {a} to {b}.", "What is {y} {a} worth in {b}?",
        "{y} {a} to {b}, please.", "If I exchange {y} {a}, how many {b} do I get?"],
        _pairs(CURRENCIES), contexts=["100", "250", "20", "1,000", "75", "5,000"], swap=True),
    Family("programming", "direction", "code", [
        "How do I migrate a project from {a} to {b}?", "What are the steps to port my app from {a} to {b}?",
        "Guide to moving a codebase from {a} to {b}?", "How can I convert my {a} code to {b}?",
        "What's involved in switching a project from {a} to {b}?"],
        _pairs([*TECH, "MySQL", "PostgreSQL", "React", "Vue", "Angular"]), swap=True),
    Family("money", "direction", "reword", [
        "{a} owes {b} twenty dollars; write a friendly reminder.", "Write a short reminder that {a} owes {b} "
        "twenty dollars.", "Draft a polite note saying {a} still owes {b} twenty dollars.",
        "{b} lent {a} twenty dollars; write a friendly reminder about it.",
        "Compose a friendly reminder: {a} owes {b} twenty dollars."],
        _pairs(PEOPLE), swap=True),
    Family("writing", "direction", "reword", [
        "List the {a} before the {b} in the summary.", "In the summary, put the {a} ahead of the {b}.",
        "Write the summary with the {a} first and the {b} after them.",
        "Summarize it listing the {a} before the {b}.", "Order the summary so the {b} come after the {a}."],
        _pairs(["pros", "cons", "risks", "benefits", "costs", "results", "methods", "goals", "findings"]),
        swap=True),
    Family("programming", "direction", "reword", [
        "Is {a} faster than {b}?", "Does {a} run faster than {b}?", "Is {a} quicker than {b} in general?",
        "Would {a} outperform {b} on speed?", "In terms of speed, is {a} faster than {b}?"],
        _pairs([*TECH, "Node.js", "C++"]), swap=True),
    Family("travel", "direction", "reword", [
        "What's the cheapest way to get from {a} to {b}?", "Cheapest route from {a} to {b}?",
        "How can I travel from {a} to {b} on a budget?", "Budget options for going to {b} from {a}?",
        "What is the least expensive way to go from {a} to {b}?"],
        _pairs(CITIES), swap=True),
    Family("devices", "direction", "reword", [
        "How do I transfer my photos from {a} to {b}?", "Best way to move my photos from {a} to {b}?",
        "How can I copy photos from {a} over to {b}?", "Moving photos to {b} from {a}: how?",
        "What's the easiest way to get my photos from {a} onto {b}?"],
        _pairs(["an iPhone", "an Android phone", "a Mac", "a Windows PC", "Google Drive", "Dropbox", "iCloud"]),
        swap=True),
    Family("math", "direction", "reword", [
        "What is {a} divided by {b}?", "Divide {a} by {b}.", "What do you get when you divide {a} by {b}?",
        "Compute {a} divided by {b}.", "Calculate {a} divided by {b} for me."],
        _pairs(["12", "7", "45", "100", "3", "64", "9", "250"]), swap=True),
    Family("math", "direction", "reword", [
        "What is {a} minus {b}?", "Subtract {b} from {a}.", "What do you get if you take {b} away from {a}?",
        "Calculate {a} minus {b}.", "How much is {a} minus {b}?"],
        _pairs(["15", "8", "42", "100", "27", "63", "5", "90"]), swap=True),
    Family("programming", "direction", "code", [
        "Does {a} inherit from {b} in this design?", "In this design, is {a} a subclass of {b}?",
        "Should {a} extend {b} here?", "Is it right for {a} to inherit from {b}?",
        "Would you make {a} a subclass of {b}?"],
        _pairs(["User", "Admin", "Account", "Customer", "Employee", "Manager", "Person"]), swap=True),
]

# symbol: the expression is the slot; a near miss changes one token of it
_PY = {"<<": [">>"], ">>": ["<<"], "==": ["!=", "<=", ">="], "!=": ["=="], "*": ["**", "/", "+"],
       "**": ["*"], "/": ["//", "%", "*"], "//": ["/", "%"], "%": ["//", "/"], "&": ["|", "^"], "|": ["&", "^"],
       "^": ["&", "|", "**"], "<": ["<=", ">"], ">": [">=", "<"], "<=": ["<", ">="], ">=": [">", "<="],
       "+": ["-", "*"], "-": ["+"], "+=": ["-=", "=+"], "-=": ["+="], "and": ["or"], "or": ["and"],
       "is": ["=="], "in": ["not in"], "[0]": ["[1]", "[-1]"], "[-1]": ["[0]", "[1]"], "[1:]": ["[:1]", "[:-1]"],
       "[::-1]": ["[::1]", "[:-1]"], "'": ['"'], "i++": ["++i"], "++i": ["i++"], "===": ["==", "!=="],
       "??": ["||"], "||": ["&&", "??"], "&&": ["||"], "-r": ["-f", "-i"], "-f": ["-r", "-i"], "-rf": ["-ri"],
       "-a": ["-l", "-h"], "-l": ["-a", "-h"], "-i": ["-v", "-w"], "-v": ["-i"], "--soft": ["--hard", "--mixed"],
       "--hard": ["--soft"], "-x": ["-c", "-t"], "-c": ["-x", "-t"], "-9": ["-15"], "-15": ["-9"],
       ">>>": [">>"], "\\d+": ["\\w+", "\\d*", "\\s+"], "\\w+": ["\\d+", "\\W+"],
       "a+b": ["a*b", "a?b"], "a*b": ["a+b"], "^abc": ["abc$"], "abc$": ["^abc"], "[a-z]+": ["[^a-z]+", "[a-z]*"],
       "(ab)+": ["(ab)*", "ab+"], ".*": [".+", ".*?"], ".+": [".*"], "ASC": ["DESC"], "DESC": ["ASC"],
       "LEFT": ["INNER", "RIGHT"], "INNER": ["LEFT", "OUTER"], "COUNT(*)": ["COUNT(email)"], "->": ["=>"],
       "=>": ["->"], "::": ["."], "*p++": ["(*p)++", "++*p"], "(*p)++": ["*p++"], "&x": ["*x"], "*x": ["&x"]}

SYMBOL = [
    Family("programming", "symbol", "code", [
        "What does {x} do in Python?", "In Python, what is the result of {x}?", "Explain the Python expression {x}.",
        "What does the expression {x} evaluate to in Python?", "How does Python evaluate {x}?"],
        _v("a << 2", "a >> 2", "x == y", "x != y", "n ** 2", "n * 2", "7 // 2", "7 / 2", "7 % 2", "a & b",
           "a | b", "a ^ b", "x and y", "x or y", "x is None", "items[0]", "items[-1]", "s[::-1]", "s[1:]",
           "x += 1", "x -= 1", "a >= b", "a < b", "'a' in s"), mutate=_PY),
    Family("programming", "symbol", "code", [
        "What does {x} return in JavaScript?", "In JavaScript, what is the value of {x}?",
        "What's the result of {x} in JS?", "Explain what {x} evaluates to in JavaScript.",
        "How does JavaScript evaluate {x}?"],
        _v("a === b", "a == b", "x ?? y", "x || y", "x && y", "i++", "++i", "'5' + 3", "'5' - 3", "a >>> 1",
           "a >> 1", "[1, 2] + [3]", "typeof null", "arr[0]", "arr[-1]", "n ** 3", "n * 3"), mutate=_PY),
    Family("shell", "symbol", "code", [
        "What does the command {x} do?", "Explain the shell command {x}.", "What happens when I run {x}?",
        "Is it safe to run {x} in my terminal?", "Can you explain what {x} does in Linux?"],
        _v("rm -r build", "rm -f build", "rm -rf build", "ls -a", "ls -l", "git reset --soft HEAD~1",
           "git reset --hard HEAD~1", "grep -i error app.log", "grep -v error app.log", "tar -x archive.tar",
           "tar -c archive.tar", "kill -9 1234", "kill -15 1234", "echo '$HOME'", "cp -r src dest",
           "sort -r names.txt", "du -h", "df -h", "mkdir -p a/b"), mutate=_PY),
    Family("programming", "symbol", "code", [
        "What does the regex {x} match?", "Which strings does the pattern {x} match?",
        "Explain the regular expression {x}.", "What will the regex {x} match?", "What does {x} mean as a regex?"],
        _v("a+b", "a*b", "a?b", "^abc", "abc$", "\\d+", "\\w+", "[a-z]+", "[^a-z]+", "(ab)+", ".*", ".+"),
        mutate=_PY),
    Family("databases", "symbol", "code", [
        "What does {x} return?", "Explain this SQL query: {x}", "What rows does {x} give me?",
        "Can you explain the result of {x}?", "What is the output of the query {x}?"],
        _v("SELECT * FROM users WHERE age > 30", "SELECT * FROM users WHERE age >= 30",
           "SELECT name FROM users ORDER BY name ASC", "SELECT name FROM users ORDER BY name DESC",
           "SELECT * FROM a LEFT JOIN b ON a.id = b.id", "SELECT * FROM a INNER JOIN b ON a.id = b.id",
           "SELECT COUNT(*) FROM users", "SELECT * FROM users WHERE name != 'bob'"), mutate=_PY),
    Family("programming", "symbol", "code", [
        "In C, what does {x} do?", "What is the effect of {x} in C?", "Explain the C expression {x}.",
        "What happens when {x} runs in a C program?", "How does C evaluate {x}?"],
        _v("*p++", "(*p)++", "++*p", "&x", "*x", "x & y", "x && y", "x << 1", "x >> 1", "a[i] == b",
           "a[i] = b", "x != 0", "x == 0", "p->next", "i++", "++i"), mutate=_PY),
    Family("math", "symbol", "reword", [
        "What is {x}?", "Calculate {x}.", "Compute {x} for me.", "Evaluate {x}.", "What does {x} equal?"],
        _v("2^10", "2*10", "3 + 4 * 5", "(3 + 4) * 5", "10 / 4", "10 % 4", "2 ** 8", "2 * 8", "9 - 3 - 2",
           "9 - (3 - 2)", "6 / 3 * 2", "6 / (3 * 2)"), mutate=_PY),
    Family("programming", "symbol", "code", [
        "What is the difference between {x} and the usual way in Rust?", "In Rust, what does {x} mean?",
        "Explain {x} in Rust.", "What does {x} do in a Rust program?", "How should I read {x} in Rust code?"],
        _v("&x", "*x", "x?", "a::b", "a.b", "|x| x + 1", "x as u8", "&mut x", "'a", "a => b", "a -> b"),
        mutate=_PY),
]

ATTRIBUTE = [
    Family("cooking", "attribute", "reword", [
        "Give me a {x} pancake recipe.", "Can you suggest a {x} recipe for pancakes?", "How do I make {x} pancakes?",
        "What's a good recipe for {x} pancakes?", "I need a pancake recipe that is {x}."],
        _v("gluten-free", "dairy-free", "egg-free", "sugar-free", "nut-free", "vegan", "keto", "low-carb",
           "low-fat", "high-protein")),
    Family("cooking", "attribute", "reword", [
        "How long should I boil an egg to get it {x}?", "Boiling time for a {x} egg?",
        "How many minutes does a {x} boiled egg take?", "For a {x} egg, how long do I boil it?",
        "What's the cooking time for a {x} egg?"],
        _v("hard", "soft", "medium", "runny", "jammy")),
    Family("work", "attribute", "reword", [
        "What is the {x} salary for a nurse in Texas?", "How much is the {x} pay for nurses in Texas?",
        "In Texas, what's the {x} nurse salary?", "Tell me the {x} salary of a Texas nurse.",
        "What do nurses in Texas earn at the {x}?"],
        _v("minimum", "maximum", "average", "median", "starting")),
    Family("work", "attribute", "reword", [
        "How do I find software jobs I can do {x}?", "Where can I look for software jobs that are {x}?",
        "Best way to land a software job working {x}?", "How can I get hired as a developer working {x}?",
        "Tips for finding {x} software engineering work?"],
        _v("remotely", "locally", "part-time", "full-time", "abroad", "freelance")),
    Family("writing", "attribute", "reword", [
        "Rewrite this email in a {x} tone.", "Make this email sound more {x}.", "Can you make my email {x}?",
        "Change the tone of this email to {x}.", "Please give this email a {x} tone."],
        _v("formal", "casual", "friendly", "professional", "persuasive", "apologetic", "urgent", "humorous")),
    Family("language", "attribute", "reword", [
        "When do I use the word {x}?", "How is {x} used correctly in a sentence?", "Explain when to write {x}.",
        "What's the right way to use {x}?", "Can you explain the correct use of {x}?"],
        _v("their", "there", "they're", "your", "you're", "its", "it's", "affect", "effect", "then", "than",
           "whose", "who's", "lose", "loose")),
    Family("cooking", "attribute", "reword", [
        "How do I make {x} coffee at home?", "What's the best way to brew {x} coffee at home?",
        "Recipe for {x} coffee I can make at home?", "Can you explain how to make {x} coffee?",
        "At home, how should I prepare {x} coffee?"],
        _v("iced", "hot", "cold brew", "decaf", "strong", "weak", "black", "sweet")),
    Family("health", "attribute", "reword", [
        "What's a good moisturizer for {x} skin?", "Which moisturizer works best for {x} skin?",
        "Recommend a moisturizer for {x} skin.", "Best moisturizer if I have {x} skin?",
        "For {x} skin, what moisturizer should I use?"],
        _v("dry", "oily", "sensitive", "combination", "normal", "acne-prone", "mature")),
    Family("health", "attribute", "reword", [
        "Suggest a {x} running plan.", "Can you give me a {x} plan for running?", "What's a good {x} running "
        "program?", "I want a {x} running schedule.", "Make me a {x} training plan for running."],
        _v("beginner", "intermediate", "advanced", "weekly", "daily", "indoor", "outdoor")),
    Family("shopping", "attribute", "reword", [
        "What is the best {x} mattress for back pain?", "Which {x} mattress helps most with back pain?",
        "Recommend a {x} mattress for a sore back.", "For back pain, what {x} mattress should I buy?",
        "Best {x} mattresses if my back hurts?"],
        _v("firm", "soft", "medium-firm", "cheap", "expensive", "hybrid", "memory foam", "cooling")),
    Family("cars", "attribute", "reword", [
        "What are the best {x} cars for a family?", "Which {x} cars are best for families?",
        "Recommend a {x} family car.", "Top {x} cars for a family of four?", "Good {x} cars for families?"],
        _v("electric", "hybrid", "diesel", "used", "new", "small", "large", "cheap", "luxury", "safe")),
    Family("programming", "attribute", "code", [
        "How do I make a {x} copy of a list in Python?", "What's the way to create a {x} copy of a Python list?",
        "In Python, how can I {x}-copy a list?", "Making a {x} copy of a list in Python: how?",
        "Python: {x} copy of a list?"],
        _v("shallow", "deep", "sorted", "reversed")),
    Family("programming", "attribute", "code", [
        "How do I run the tests {x}?", "What's the command to run my tests {x}?", "How can I execute the "
        "test suite {x}?", "Run the test suite {x}: how?", "Is there a way to run tests {x}?"],
        _v("locally", "remotely", "in parallel", "sequentially", "verbosely", "quietly", "in CI", "in Docker")),
]

ROLE = [
    Family("geography", "role", "reword", [
        "What is the {x} of {y}?", "Which city is the {x} of {y}?", "Tell me the {x} of {y}.",
        "What city is {y}'s {x}?", "Name the {x} of {y}."],
        _v("capital", "largest city", "most populous city", "oldest city", "second largest city"),
        contexts=["Australia", "Canada", "Turkey", "Brazil", "Switzerland", "Nigeria", "Vietnam", "Morocco",
                  "New Zealand", "Pakistan"]),
    Family("books", "role", "reword", [
        "Who is the {x} of {y}?", "Who was the {x} of the book {y}?", "Tell me who the {x} of {y} is.",
        "Name the {x} of {y}.", "Who's listed as the {x} of {y}?"],
        _v("author", "publisher", "translator", "illustrator", "editor"),
        contexts=["Don Quixote", "War and Peace", "The Little Prince", "One Hundred Years of Solitude",
                  "Crime and Punishment", "The Name of the Rose"]),
    Family("business", "role", "reword", [
        "Who is the {x} of {y}?", "Who serves as the {x} of {y}?", "Who is {y}'s {x}?",
        "Tell me the name of the {x} of {y}.", "Name {y}'s current {x}."],
        _v("CEO", "founder", "CFO", "CTO", "chairman", "president"),
        contexts=["Nvidia", "Netflix", "Spotify", "Airbnb", "Shopify", "Siemens", "Toyota", "Samsung"]),
    Family("politics", "role", "reword", [
        "Who is the {x} of {y}?", "Who currently serves as {y}'s {x}?", "Tell me who the {x} of {y} is.",
        "Name the current {x} of {y}.", "Who holds the office of {x} in {y}?"],
        _v("president", "prime minister", "vice president", "head of state", "foreign minister"),
        contexts=["France", "India", "Italy", "Israel", "Finland", "Ireland", "Portugal", "South Korea"]),
    Family("science", "role", "reword", [
        "What is the {x} of {y}?", "At what temperature is the {x} of {y}?", "Tell me the {x} of {y}.",
        "What's {y}'s {x}?", "Give me the {x} of {y}."],
        _v("boiling point", "melting point", "freezing point", "flash point"),
        contexts=["water", "ethanol", "mercury", "iron", "acetone", "nitrogen", "gold", "olive oil"]),
    Family("geography", "role", "reword", [
        "What is the {x} river in {y}?", "Which river is the {x} in {y}?", "Name the {x} river of {y}.",
        "In {y}, which is the {x} river?", "Tell me the {x} river in {y}."],
        _v("longest", "widest", "deepest", "shortest", "most polluted"),
        contexts=["Europe", "Africa", "Asia", "South America", "North America", "Australia"]),
    Family("science", "role", "reword", [
        "Which planet is the {x} in our solar system?", "What is the {x} planet in the solar system?",
        "Name the {x} planet of our solar system.", "In our solar system, which planet is {x}?",
        "Tell me the solar system's {x} planet."],
        _v("largest", "smallest", "hottest", "coldest", "densest", "brightest")),
    Family("history", "role", "reword", [
        "Who {x} the telephone?", "Which person {x} the telephone?", "Tell me who {x} the telephone.",
        "Do you know who {x} the telephone?", "Name the person who {x} the telephone."],
        _v("invented", "patented", "improved", "popularized", "commercialized")),
    Family("health", "role", "reword", [
        "What is the {x} of {y}?", "Tell me the {x} of {y}.", "What's the usual {x} of {y}?",
        "Can you tell me the {x} of {y}?", "Describe the {x} of {y}."],
        _v("symptoms", "causes", "treatment", "incubation period", "risk factors", "complications"),
        contexts=["measles", "shingles", "malaria", "asthma", "anemia", "gout", "sepsis"]),
]

# paraphrase-only classes: the value's spellings differ; a changed value is a plain near miss (kind "entity")
ABBREVIATION = [
    Family("programming", "entity", "abbreviation", [
        "How do I read a file line by line in {x}?", "What's the best way to read a file line by line in {x}?",
        "Reading a file line by line in {x}: how?", "In {x}, how can I read a file one line at a time?",
        "How to read a text file line by line using {x}?"],
        [["JS", "JavaScript"], ["TS", "TypeScript"], ["Golang", "Go"], ["C#", "C sharp"], ["Node", "Node.js"],
         ["py", "Python"]]),
    Family("devops", "entity", "abbreviation", [
        "How do I back up a {x}?", "What's the best way to back up my {x}?", "Backing up a {x}: how?",
        "How can I make a backup of a {x}?", "Steps to back up a {x}?"],
        [["DB", "database"], ["repo", "repository"], ["VM", "virtual machine"], ["k8s cluster",
         "Kubernetes cluster"], ["config file", "configuration file"], ["env file", "environment file"]]),
    Family("travel", "entity", "abbreviation", [
        "What are the best things to do in {x}?", "What should I see when I visit {x}?",
        "Top attractions in {x}?", "Things to do on a trip to {x}?", "What's worth doing in {x}?"],
        [["NYC", "New York City"], ["LA", "Los Angeles"], ["SF", "San Francisco"], ["DC", "Washington DC"],
         ["the UK", "the United Kingdom"], ["the US", "the United States", "the USA"],
         ["the UAE", "the United Arab Emirates"]]),
    Family("devops", "entity", "abbreviation", [
        "How do I set an {x} in Docker?", "What's the way to define an {x} for a Docker container?",
        "Setting an {x} in a Docker container: how?", "How can I pass an {x} to Docker?",
        "How to add an {x} to my Docker setup?"],
        [["env var", "environment variable"]]),
    Family("programming", "entity", "abbreviation", [
        "How do I open a {x} on GitHub?", "What's the way to create a {x} on GitHub?",
        "Steps to submit a {x} on GitHub?", "How can I make a {x} in GitHub?", "GitHub: how do I open a {x}?"],
        [["PR", "pull request"], ["draft PR", "draft pull request"]]),
    Family("education", "entity", "abbreviation", [
        "What's a good {x} course for beginners?", "Can you recommend a beginner {x} course?",
        "Which {x} course should a beginner take?", "Best {x} course to start with?",
        "Recommend an introductory {x} course."],
        [["ML", "machine learning"], ["AI", "artificial intelligence"], ["DB", "database"], ["OS",
         "operating system"]]),
]

NUMBER_WORDS = [
    Family("cooking", "number", "number_words", [
        "How many grams of flour are in {x}?", "What does {x} of flour weigh in grams?",
        "{x} of flour is how many grams?", "How much does {x} of flour weigh in grams?",
        "Grams in {x} of flour?"],
        [["a cup", "one cup", "1 cup"], ["two cups", "2 cups"], ["three cups", "3 cups"],
         ["half a cup", "0.5 cup"], ["a tablespoon", "one tablespoon", "1 tbsp"], ["two tablespoons", "2 tbsp"]]),
    Family("parenting", "number", "number_words", [
        "What's a good birthday gift for a {x}?", "Gift ideas for a {x}'s birthday?",
        "What should I buy a {x} for their birthday?", "Birthday present ideas for a {x}?",
        "Can you suggest a birthday gift for a {x}?"],
        [["five-year-old", "5 year old", "5-year-old"], ["ten-year-old", "10 year old", "10-year-old"],
         ["three-year-old", "3 year old", "3-year-old"], ["twelve-year-old", "12 year old"],
         ["seven-year-old", "7 year old", "7-year-old"]]),
    Family("parenting", "number", "number_words", [
        "How many hours should a {x} sleep?", "How much sleep does a {x} need?", "Recommended sleep for a {x}?",
        "How long should a {x} sleep each night?", "What's the right amount of sleep for a {x}?"],
        [["two-year-old", "2 year old", "2-year-old"], ["six-year-old", "6 year old"],
         ["four-month-old", "4 month old", "4-month-old"], ["one-year-old", "1 year old", "1-year-old"],
         ["fifteen-year-old", "15 year old"]]),
    Family("health", "number", "number_words", [
        "Is {x} of coffee a day too much?", "Is drinking {x} of coffee daily too much?",
        "Too much coffee if I have {x} a day?", "Is {x} of coffee per day unhealthy?",
        "Are {x} of coffee each day too many?"],
        [["a cup", "one cup", "1 cup"], ["two cups", "2 cups"], ["four cups", "4 cups"], ["six cups", "6 cups"]]),
    Family("health", "number", "number_words", [
        "How many calories does a {x} walk burn?", "Calories burned on a {x} walk?",
        "How many calories will I burn on a {x} walk?", "What does a {x} walk burn in calories?",
        "Roughly how many calories in a {x} walk?"],
        [["30-minute", "thirty-minute", "30 minute", "30 min"], ["one-hour", "1 hour", "1-hour"],
         ["two-hour", "2 hour", "2-hour"], ["ten-minute", "10 minute", "10-minute"],
         ["45-minute", "forty-five minute"]]),
    Family("travel", "number", "number_words", [
        "Is {x} enough to see Rome?", "Can I see Rome in {x}?", "Is {x} in Rome enough?",
        "Will {x} be enough for Rome?", "Are {x} enough time for a visit to Rome?"],
        [["a day", "one day", "1 day"], ["two days", "2 days"], ["three days", "3 days"],
         ["a week", "one week", "1 week"], ["five days", "5 days"]]),
]

UNITS = [
    Family("finance", "number", "units", [
        "Convert {x} to euros.", "How much is {x} in euros?", "What's {x} in EUR?", "{x} in euros?",
        "How many euros do I get for {x}?"],
        [["$100", "100 USD", "100 dollars", "100 US dollars"], ["$250", "250 USD", "250 dollars"],
         ["$40", "40 USD", "40 dollars"], ["$1,000", "1000 USD", "1,000 dollars"], ["$5", "5 USD", "five dollars"]]),
    Family("units", "number", "units", [
        "How many miles is {x}?", "Convert {x} to miles.", "What is {x} in miles?", "{x} in miles, please.",
        "How far in miles is {x}?"],
        [["5 km", "5 kilometers", "five kilometres", "5 kilometres"], ["10 km", "10 kilometers", "ten kilometers"],
         ["42 km", "42 kilometers"], ["21 km", "21 kilometres"], ["100 km", "100 kilometers"]]),
    Family("units", "number", "units", [
        "What is {x} in Celsius?", "Convert {x} to Celsius.", "How many degrees Celsius is {x}?",
        "{x} to Celsius?", "What's {x} in degrees Celsius?"],
        [["100°F", "100 degrees Fahrenheit", "100 Fahrenheit"], ["350°F", "350 degrees Fahrenheit"],
         ["72°F", "72 degrees Fahrenheit", "72 Fahrenheit"], ["0°F", "0 degrees Fahrenheit"]]),
    Family("units", "number", "units", [
        "How many pounds is {x}?", "Convert {x} to pounds.", "What's {x} in lbs?", "{x} in pounds?",
        "How much is {x} in pounds?"],
        [["5 kg", "5 kilograms", "five kilos"], ["70 kg", "70 kilograms", "70 kilos"],
         ["2.5 kg", "2.5 kilograms"], ["100 kg", "100 kilograms", "a hundred kilograms"]]),
    Family("cooking", "number", "units", [
        "How many ml are in {x}?", "Convert {x} to milliliters.", "{x} in ml?", "What is {x} in millilitres?",
        "How many milliliters is {x}?"],
        [["a teaspoon", "1 tsp", "one teaspoon"], ["2 tablespoons", "2 tbsp", "two tablespoons"],
         ["a cup", "1 cup", "one cup"], ["half a cup", "0.5 cup"]]),
]

REWORD = [
    Family("books", "entity", "reword", [
        "Who is the author of {x}?", "Who wrote {x}?", "{x} was written by whom?", "Who's the writer of {x}?",
        "Which author wrote {x}?"],
        _v("Moby-Dick", "Pride and Prejudice", "The Hobbit", "Dracula", "Frankenstein", "Ulysses", "Beloved")),
    Family("business", "entity", "reword", [
        "When was {x} founded?", "What year was {x} established?", "In which year did {x} start?",
        "How long ago was {x} founded, and in what year?", "Founding year of {x}?"],
        _v("IKEA", "Nintendo", "Lego", "Adidas", "Heineken", "Nokia", "Volvo")),
    Family("geography", "entity", "reword", [
        "Where is {x} located?", "In which country is {x}?", "What country is {x} in?",
        "Where can I find {x} on a map?", "Which country does {x} belong to?"],
        _v("Machu Picchu", "Angkor Wat", "Petra", "Chichen Itza", "the Acropolis", "Table Mountain")),
    Family("health", "entity", "reword", [
        "What are the side effects of {x}?", "Does {x} have side effects?", "What side effects can {x} cause?",
        "Are there any side effects from taking {x}?", "{x}: what are its side effects?"],
        _v("ibuprofen", "metformin", "melatonin", "amoxicillin", "caffeine pills", "statins")),
    Family("people", "entity", "reword", [
        "How old is {x}?", "What is {x}'s age?", "What age is {x} now?", "How many years old is {x}?",
        "When was {x} born, and how old is that?"],
        _v("Barack Obama", "Taylor Swift", "Lionel Messi", "Meryl Streep", "Elon Musk", "Serena Williams")),
]

# natural: one question each, phrased by hand the way people write (no slot); paired within a family
NATURAL: list[list[str]] = [
    ["How can I lose weight quickly?", "What's the fastest way to lose weight?", "Tips for losing weight fast?",
     "I want to drop some weight quickly, how?", "Best way to lose weight in a short time?"],
    ["How do I improve my English speaking?", "What can I do to speak English better?",
     "Ways to get better at spoken English?", "How can I become more fluent when speaking English?"],
    ["Why is the sky blue?", "What makes the sky look blue?", "Why does the sky appear blue during the day?",
     "What's the reason the sky is blue?"],
    ["How do I stop procrastinating?", "What are good ways to beat procrastination?",
     "How can I stop putting things off?", "Tips to stop procrastinating?"],
    ["What is the best way to learn programming?", "How should I start learning to code?",
     "What's a good way to learn how to program?", "How do beginners best learn programming?"],
    ["How can I fall asleep faster?", "What helps you fall asleep quickly?", "Tips for getting to sleep faster?",
     "I can't fall asleep, how do I fall asleep quicker?"],
    ["How do I make my phone battery last longer?", "Ways to extend my phone's battery life?",
     "How can I save battery on my phone?", "Tips to make a smartphone battery last longer?"],
    ["What should I do if I feel anxious?", "How can I deal with anxiety?", "What helps when I'm feeling anxious?",
     "Ways to cope with feeling anxious?"],
    ["How do I get rid of a headache without medicine?", "Natural ways to relieve a headache?",
     "How can I cure a headache without pills?", "What helps a headache besides painkillers?"],
    ["How can I save money on groceries?", "Ways to spend less on groceries?", "Tips to cut my grocery bill?",
     "How do I reduce how much I spend on food shopping?"],
    ["What are the benefits of meditation?", "Why should I meditate?", "What does meditation do for you?",
     "How does meditating help?"],
    ["How do I start a small business?", "What are the steps to starting a small business?",
     "How can I open my own small business?", "Where do I begin if I want to start a business?"],
    ["How do I clean a cast iron pan?", "What's the right way to wash a cast iron skillet?",
     "Cleaning cast iron cookware: how?", "How should I clean my cast iron frying pan?"],
    ["Why do cats purr?", "What makes a cat purr?", "What's the reason cats purr?", "Why does my cat purr?"],
    ["How do I write a good resume?", "Tips for writing a strong CV?", "How can I make my resume better?",
     "What makes a resume stand out?"],
    ["How can I be more productive working from home?", "Tips for staying productive when working remotely?",
     "How do I get more done while working from home?", "Ways to stay focused working from home?"],
    ["What causes hiccups?", "Why do we get hiccups?", "What makes people hiccup?", "Where do hiccups come from?"],
    ["How do I negotiate a higher salary?", "Tips for negotiating a raise in salary?",
     "How can I ask for more money in a job offer?", "What's the best way to negotiate my pay?"],
    ["How do I keep my houseplants alive?", "Tips for not killing my indoor plants?",
     "How can I take better care of houseplants?", "What do houseplants need to stay healthy?"],
    ["How can I make new friends as an adult?", "Ways to meet new friends as a grown-up?",
     "How do adults make friends?", "It's hard to make friends as an adult, any tips?"],
    ["What is the difference between weather and climate?", "How does weather differ from climate?",
     "Weather vs climate: what's the difference?", "Is climate the same thing as weather?"],
    ["How do I get better at public speaking?", "Tips to improve my public speaking?",
     "How can I become a better public speaker?", "How do I stop being nervous when speaking in public?"],
    ["Why do we dream?", "What is the purpose of dreaming?", "Why do people have dreams?",
     "What causes us to dream at night?"],
    ["How do I remove a red wine stain?", "What gets red wine out of fabric?", "How can I clean a red wine stain?",
     "Tips for getting red wine stains out?"],
    ["How do vaccines work?", "What do vaccines do in the body?", "How does a vaccine protect you?",
     "Can you explain how vaccines work?"],
    ["How can I learn to cook?", "What's the best way to start cooking for myself?",
     "How do I teach myself to cook?", "Tips for learning how to cook as a beginner?"],
    ["How do I stop my dog from barking?", "Ways to get my dog to stop barking?", "How can I train my dog not "
     "to bark so much?", "My dog barks all the time, how do I stop it?"],
    ["How does compound interest work?", "Can you explain compound interest?", "What is compound interest and "
     "how does it work?", "How is compound interest calculated?"],
    ["How do I choose a good laptop?", "What should I look for when buying a laptop?",
     "Tips for picking the right laptop?", "How can I decide which laptop to buy?"],
    ["What's the healthiest breakfast?", "What is a healthy thing to eat for breakfast?",
     "Healthy breakfast ideas?", "What should I eat for a healthy breakfast?"],
]

ALL: list[Family] = [*DIRECTION, *SYMBOL, *ATTRIBUTE, *ROLE, *ABBREVIATION, *NUMBER_WORDS, *UNITS, *REWORD]
