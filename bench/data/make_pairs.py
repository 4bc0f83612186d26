"""Labelled question pairs for the semantic cache, generated here (seeded, deterministic; see README.md).

Two sources, both written for this project: ``FAMILIES`` below (the "general" set: one question with one
slot that decides the answer, an entity, a number, a date, a negation, an opposite, a verb or a sort key) and
``classes.py`` (the near-miss classes direction, symbol, attribute, role and the paraphrase classes reword,
abbreviation, number_words, units, code, natural). A paraphrase pair is two phrasings with the same value; a
near-miss pair changes the value (mostly in the same phrasing: one word or token changed, or the two values
swapped); an unrelated pair takes questions from two families of one split. Families, not pairs, are split
into train and test (40% test within each class), so no test phrasing occurs in train.

``build()`` is what the trainer and the bench read (a few seconds); ``python bench/data/make_pairs.py
[--out FILE]`` writes them as JSON lines and prints the counts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.data.classes import ADDED, ALL, NATURAL, NATURAL_ADDED, Family

# (topic, slot kind, phrasings with {x}, slot values)
FAMILIES: list[tuple[str, str, list[str], list[str]]] = [
    (
        "geography",
        "entity",
        [
            "What is the capital of {x}?",
            "Which city is the capital of {x}?",
            "Tell me the capital city of {x}.",
            "What's {x}'s capital?",
            "Name the capital of {x}, please.",
        ],
        ["France", "Germany", "Spain", "Italy", "Japan", "Canada", "Brazil", "Kenya"],
    ),
    (
        "geography",
        "entity",
        [
            "How many people live in {x}?",
            "What is the population of {x}?",
            "What's the current population of {x}?",
            "How large is the population of {x}?",
            "Roughly how many inhabitants does {x} have?",
        ],
        ["Tokyo", "London", "Paris", "Berlin", "Mumbai", "Chicago", "Lagos"],
    ),
    (
        "geography",
        "entity",
        [
            "What currency do they use in {x}?",
            "Which currency is used in {x}?",
            "What money should I bring to {x}?",
            "What is the official currency of {x}?",
            "In {x}, what currency do people pay with?",
        ],
        ["Switzerland", "Poland", "Sweden", "Thailand", "Mexico", "Egypt", "Norway"],
    ),
    (
        "geography",
        "entity",
        [
            "What language do people speak in {x}?",
            "Which language is spoken in {x}?",
            "What is the main language of {x}?",
            "In {x}, what language do they speak?",
            "What's the official language in {x}?",
        ],
        ["Belgium", "Brazil", "Austria", "Argentina", "Portugal", "Finland", "Greece"],
    ),
    (
        "travel",
        "entity",
        [
            "Do I need a visa to visit {x}?",
            "Is a visa required for travel to {x}?",
            "Will I need a visa for a trip to {x}?",
            "What are the visa requirements for {x}?",
            "Can I enter {x} without applying for a visa?",
        ],
        ["India", "China", "Vietnam", "Turkey", "Australia", "Russia", "Cuba"],
    ),
    (
        "travel",
        "date",
        [
            "Are museums in Rome open on {x}?",
            "Can I visit the museums in Rome on a {x}?",
            "Do Rome's museums open on {x}?",
            "Is it possible to see Rome's museums on {x}?",
            "On {x}, are the museums in Rome open?",
        ],
        ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    ),
    (
        "travel",
        "date",
        [
            "What is the weather like in Lisbon in {x}?",
            "How warm is Lisbon in {x}?",
            "What temperatures should I expect in Lisbon in {x}?",
            "Is Lisbon hot or cold in {x}?",
            "What's Lisbon's typical weather during {x}?",
        ],
        ["January", "March", "May", "July", "September", "November", "December"],
    ),
    (
        "travel",
        "opposite",
        [
            "How early should I arrive at the airport for a {x} flight?",
            "How much time before a {x} flight should I get to the airport?",
            "When should I be at the airport for a {x} flight?",
            "For a {x} flight, how early do I need to reach the airport?",
            "What's the recommended arrival time at the airport for {x} flights?",
        ],
        ["domestic", "international"],
    ),
    (
        "programming",
        "sort_key",
        [
            "How do I sort a Python dictionary by {x}?",
            "How can I sort a dict by {x} in Python?",
            "What's the way to order a Python dictionary by its {x}?",
            "Sort a dictionary by {x} in Python: how?",
            "In Python, how do I get a dict sorted by {x}?",
        ],
        ["value", "key", "length"],
    ),
    (
        "programming",
        "sort_key",
        [
            "How do I sort a list of files by {x} in bash?",
            "How can I list files sorted by {x} in the shell?",
            "What command sorts files by {x} in Linux?",
            "In bash, how do I order files by {x}?",
            "Show files ordered by {x} on the Linux command line.",
        ],
        ["size", "name", "date", "extension"],
    ),
    (
        "programming",
        "opposite",
        [
            "How do I sort an array in {x} order in JavaScript?",
            "How can I sort a JS array in {x} order?",
            "What's the way to sort an array {x} in JavaScript?",
            "In JavaScript, how do I order an array in {x} order?",
            "Sort a JavaScript array in {x} order: how?",
        ],
        ["ascending", "descending"],
    ),
    (
        "programming",
        "verb",
        [
            "How do I {x} a CSV file in Python?",
            "What's the best way to {x} a CSV file with Python?",
            "How can I {x} CSV files using Python?",
            "In Python, how do I {x} a CSV?",
            "Show me how to {x} a CSV file in Python.",
        ],
        ["read", "write", "merge", "split"],
    ),
    (
        "programming",
        "verb",
        [
            "How do I {x} a JSON file in Go?",
            "What's the way to {x} JSON files in Go?",
            "In Go, how can I {x} a JSON file?",
            "How should I {x} a JSON file using Golang?",
            "Show me how to {x} a JSON file in Go.",
        ],
        ["parse", "write", "validate", "stream"],
    ),
    (
        "programming",
        "entity",
        [
            "How do I reverse a string in {x}?",
            "What's the easiest way to reverse a string in {x}?",
            "In {x}, how can I reverse a string?",
            "How can a string be reversed in {x}?",
            "Show me string reversal in {x}.",
        ],
        ["Python", "Java", "Rust", "JavaScript", "Ruby", "Kotlin", "Swift"],
    ),
    (
        "programming",
        "entity",
        [
            "How do I read an environment variable in {x}?",
            "How can I get an environment variable in {x}?",
            "What's the way to access env vars in {x}?",
            "In {x}, how do I read an env variable?",
            "Reading environment variables in {x}: how is it done?",
        ],
        ["Node.js", "Python", "Go", "Rust", "PHP", "C#", "Perl"],
    ),
    (
        "programming",
        "opposite",
        [
            "How do I convert a string to {x} in Python?",
            "In Python, how can I make a string {x}?",
            "What method turns a Python string into {x}?",
            "How can I change a string to {x} with Python?",
            "Python: convert text to {x}, how?",
        ],
        ["uppercase", "lowercase", "title case"],
    ),
    (
        "programming",
        "opposite",
        [
            "How do I {x} a git branch?",
            "What's the command to {x} a branch in git?",
            "How can I {x} a branch with git?",
            "In git, how do I {x} a branch?",
            "Git: how to {x} a branch?",
        ],
        ["create", "delete", "rename", "merge"],
    ),
    (
        "programming",
        "opposite",
        [
            "How do I {x} changes to a remote git repository?",
            "What's the git command to {x} changes from the remote?",
            "How can I {x} my changes with git?",
            "In git, how do I {x} changes?",
            "Git: {x} changes, how?",
        ],
        ["push", "pull", "stash", "revert"],
    ),
    (
        "programming",
        "opposite",
        [
            "How do I {x} a file with gzip?",
            "What's the command to {x} a file using gzip?",
            "How can I {x} files with gzip on Linux?",
            "Using gzip, how do I {x} a file?",
            "gzip: how to {x} a file?",
        ],
        ["compress", "decompress"],
    ),
    (
        "programming",
        "opposite",
        [
            "How do I {x} a string in base64 with Python?",
            "In Python, how can I {x} a base64 string?",
            "What's the way to {x} base64 in Python?",
            "How can base64 be {x}d in Python?",
            "Python base64: how do I {x}?",
        ],
        ["encode", "decode"],
    ),
    (
        "programming",
        "number",
        [
            "How do I round a number to {x} decimal places in Python?",
            "In Python, how can I round to {x} decimal places?",
            "What's the way to round a float to {x} decimals in Python?",
            "Round a Python float to {x} decimal places: how?",
            "How can a number be rounded to {x} decimal places using Python?",
        ],
        ["2", "3", "4", "1", "5"],
    ),
    (
        "programming",
        "number",
        [
            "What HTTP status code {x} means?",
            "What does HTTP status {x} mean?",
            "What is an HTTP {x} error?",
            "Explain the HTTP {x} status code.",
            "What does a {x} response from a server mean?",
        ],
        ["404", "403", "500", "502", "429", "401", "301"],
    ),
    (
        "programming",
        "negation",
        [
            "Why does my Python code {x} raise an exception when the file is missing?",
            "My Python script {x} throw an error for a missing file, why?",
            "What explains Python code that {x} raise an exception on a missing file?",
            "Why {x} my program raise an error when the file doesn't exist?",
            "For a missing file, why {x} my Python code raise an exception?",
        ],
        ["does", "does not"],
    ),
    (
        "devices",
        "opposite",
        [
            "How do I {x} Bluetooth on my iPhone?",
            "What's the way to {x} Bluetooth on an iPhone?",
            "How can I {x} Bluetooth on iPhone?",
            "On my iPhone, how do I {x} Bluetooth?",
            "iPhone: how to {x} Bluetooth?",
        ],
        ["enable", "disable"],
    ),
    (
        "devices",
        "opposite",
        [
            "How do I turn {x} dark mode on Windows 11?",
            "How can I switch dark mode {x} in Windows 11?",
            "What's the way to turn {x} dark mode on Windows 11?",
            "On Windows 11, how do I turn dark mode {x}?",
            "Windows 11: turning dark mode {x}, how?",
        ],
        ["on", "off"],
    ),
    (
        "devices",
        "opposite",
        [
            "How do I {x} automatic updates on a Mac?",
            "What's the way to {x} auto updates on macOS?",
            "How can I {x} automatic updates on my Mac?",
            "On macOS, how do I {x} automatic updates?",
            "Mac: how to {x} automatic software updates?",
        ],
        ["enable", "disable", "pause"],
    ),
    (
        "devices",
        "opposite",
        [
            "How do I {x} the screen brightness on Android?",
            "What's the way to {x} brightness on an Android phone?",
            "How can I {x} my Android screen brightness?",
            "On Android, how do I {x} the brightness?",
            "Android: how to {x} the display brightness?",
        ],
        ["increase", "decrease"],
    ),
    (
        "devices",
        "entity",
        [
            "How do I take a screenshot on {x}?",
            "What's the shortcut for a screenshot on {x}?",
            "How can I capture my screen on {x}?",
            "On {x}, how do I take a screenshot?",
            "Screenshot on {x}: how?",
        ],
        ["Windows", "macOS", "Ubuntu", "Android", "iPad", "Chromebook"],
    ),
    (
        "devices",
        "opposite",
        [
            "How do I {x} files to Google Drive?",
            "What's the way to {x} files to Google Drive?",
            "How can I {x} a file to my Google Drive?",
            "To Google Drive, how do I {x} files?",
            "Google Drive: how to {x} files?",
        ],
        ["upload", "download", "share"],
    ),
    (
        "cooking",
        "number",
        [
            "How long should I boil an egg for a {x} minute yolk?",
            "For a {x} minute egg, how long do I boil it?",
            "How many minutes to boil an egg, {x} minute style?",
            "What's the boiling time for a {x} minute egg?",
            "A {x} minute boiled egg: how long in the water?",
        ],
        ["6", "7", "9", "11", "3"],
    ),
    (
        "cooking",
        "entity",
        [
            "How long do I roast a {x} in the oven?",
            "What's the oven roasting time for a {x}?",
            "For how long should a {x} be roasted in the oven?",
            "In the oven, how long does a {x} need to roast?",
            "Roasting a {x}: how long in the oven?",
        ],
        ["chicken", "turkey", "duck", "pork loin", "leg of lamb", "beef brisket"],
    ),
    (
        "cooking",
        "entity",
        [
            "What can I use instead of {x} in baking?",
            "What's a good substitute for {x} in baking?",
            "What can replace {x} when I bake?",
            "In baking, what works instead of {x}?",
            "Baking without {x}: what substitute works?",
        ],
        ["eggs", "butter", "milk", "sugar", "baking powder", "flour", "yeast"],
    ),
    (
        "cooking",
        "opposite",
        [
            "How do I convert {x} to Fahrenheit?",
            "What's the formula to turn {x} into Fahrenheit?",
            "How can I change {x} to Fahrenheit?",
            "Converting {x} to Fahrenheit: how?",
            "How is {x} converted into Fahrenheit?",
        ],
        ["Celsius", "Kelvin", "Rankine"],
    ),
    (
        "cooking",
        "negation",
        [
            "Can I {x} freeze cooked rice?",
            "Is it okay to {x} freeze rice after cooking it?",
            "Should I {x} freeze cooked rice?",
            "Cooked rice: can I {x} freeze it?",
            "Is freezing cooked rice something I can {x} do?",
        ],
        ["", "not", "safely", "never"],
    ),
    (
        "health",
        "entity",
        [
            "What are the symptoms of {x}?",
            "What symptoms does {x} cause?",
            "How do I know if I have {x}?",
            "What signs point to {x}?",
            "Which symptoms are typical of {x}?",
        ],
        ["flu", "measles", "diabetes", "anemia", "asthma", "migraine", "COVID-19"],
    ),
    (
        "health",
        "negation",
        [
            "Should I take ibuprofen {x} food?",
            "Is it better to take ibuprofen {x} food?",
            "Do I take ibuprofen {x} a meal?",
            "Ibuprofen {x} food: is that recommended?",
            "Is ibuprofen meant to be taken {x} food?",
        ],
        ["with", "without"],
    ),
    (
        "health",
        "number",
        [
            "How many calories does a {x} km run burn?",
            "What is the calorie burn for running {x} km?",
            "If I run {x} km, how many calories do I burn?",
            "Calories burned on a {x} km run?",
            "How much energy does a {x} kilometre run use?",
        ],
        ["5", "10", "3", "21", "42"],
    ),
    (
        "health",
        "opposite",
        [
            "How can I {x} my blood pressure naturally?",
            "What are natural ways to {x} blood pressure?",
            "How do I {x} my blood pressure without medication?",
            "Natural ways to {x} blood pressure?",
            "What helps {x} blood pressure naturally?",
        ],
        ["lower", "raise"],
    ),
    (
        "health",
        "opposite",
        [
            "How do I {x} weight safely?",
            "What's a safe way to {x} weight?",
            "How can I {x} weight in a healthy way?",
            "Safe ways to {x} weight?",
            "What is the healthiest way to {x} weight?",
        ],
        ["lose", "gain"],
    ),
    (
        "finance",
        "entity",
        [
            "What is the exchange rate from US dollars to {x}?",
            "How many {x} do I get for one US dollar?",
            "What's the USD to {x} rate?",
            "Convert US dollars to {x}: what's the rate?",
            "What does one dollar buy in {x}?",
        ],
        ["euros", "yen", "pounds", "rupees", "pesos", "francs"],
    ),
    (
        "finance",
        "number",
        [
            "What is the monthly payment on a {x} dollar loan over 5 years?",
            "How much would I pay monthly for a {x} dollar loan on a 5 year term?",
            "Monthly payment for a {x} dollar 5 year loan?",
            "For a {x} dollar loan over 5 years, what's the monthly payment?",
            "If I borrow {x} dollars for 5 years, what do I pay each month?",
        ],
        ["10000", "20000", "5000", "50000", "15000"],
    ),
    (
        "finance",
        "opposite",
        [
            "Is it a good time to {x} gold?",
            "Should I {x} gold right now?",
            "Is now the right moment to {x} gold?",
            "Would it be wise to {x} gold now?",
            "Right now, is {x}ing gold a good idea?",
        ],
        ["buy", "sell"],
    ),
    (
        "finance",
        "opposite",
        [
            "What are the tax rules for {x} income?",
            "How is {x} income taxed?",
            "What taxes apply to {x} income?",
            "How does tax work on {x} income?",
            "Which tax rules cover {x} income?",
        ],
        ["rental", "dividend", "freelance", "foreign"],
    ),
    (
        "finance",
        "date",
        [
            "Is the stock market open on {x}?",
            "Does the stock exchange trade on {x}?",
            "Can I trade stocks on {x}?",
            "On {x}, is the stock market open?",
            "Are markets open for trading on {x}?",
        ],
        ["Saturday", "Sunday", "Monday", "Good Friday", "Christmas Eve"],
    ),
    (
        "math",
        "number",
        [
            "What is the square root of {x}?",
            "What's the square root of {x}?",
            "Calculate the square root of {x}.",
            "Find the square root of {x}.",
            "What number squared gives {x}?",
        ],
        ["144", "169", "196", "225", "256", "289", "2"],
    ),
    (
        "math",
        "number",
        [
            "What is {x} percent of 250?",
            "How much is {x}% of 250?",
            "Calculate {x} percent of 250.",
            "Find {x}% of 250.",
            "What's {x} per cent of 250?",
        ],
        ["15", "20", "12", "35", "8"],
    ),
    (
        "math",
        "number",
        [
            "Is {x} a prime number?",
            "Is the number {x} prime?",
            "Can {x} be divided only by 1 and itself?",
            "Is {x} prime or composite?",
            "Tell me if {x} is a prime.",
        ],
        ["91", "97", "51", "53", "87", "89"],
    ),
    (
        "math",
        "opposite",
        [
            "How do I find the {x} of a function?",
            "What's the method to compute the {x} of a function?",
            "How can I calculate a function's {x}?",
            "Finding the {x} of a function: how?",
            "How is the {x} of a function found?",
        ],
        ["derivative", "integral", "inverse", "maximum", "minimum"],
    ),
    (
        "science",
        "entity",
        [
            "What is the boiling point of {x}?",
            "At what temperature does {x} boil?",
            "When does {x} start to boil?",
            "What's {x}'s boiling point?",
            "How hot must {x} be to boil?",
        ],
        ["water", "ethanol", "mercury", "nitrogen", "acetone", "olive oil"],
    ),
    (
        "science",
        "entity",
        [
            "How far is {x} from the Sun?",
            "What is the distance between {x} and the Sun?",
            "How many kilometres separate {x} from the Sun?",
            "What's {x}'s distance to the Sun?",
            "From the Sun, how far away is {x}?",
        ],
        ["Mars", "Venus", "Jupiter", "Saturn", "Mercury", "Neptune", "Earth"],
    ),
    (
        "science",
        "opposite",
        [
            "Why is the sky {x} during the day?",
            "What makes the sky look {x} in daytime?",
            "Why does the daytime sky appear {x}?",
            "During the day, why is the sky {x}?",
            "What causes a {x} sky in the daytime?",
        ],
        ["blue", "white", "grey"],
    ),
    (
        "science",
        "opposite",
        [
            "What happens to water when it {x}?",
            "What goes on when water {x}?",
            "How does water change as it {x}?",
            "When water {x}, what happens to it?",
            "Explain what water does as it {x}.",
        ],
        ["freezes", "boils", "evaporates", "condenses"],
    ),
    (
        "history",
        "entity",
        [
            "Who was the first president of {x}?",
            "Who served as {x}'s first president?",
            "Name the first president of {x}.",
            "Who became the first president of {x}?",
            "{x}'s first president was who?",
        ],
        ["France", "Kenya", "Mexico", "Brazil", "Finland", "Ireland", "Ghana"],
    ),
    (
        "history",
        "number",
        [
            "What happened in the year {x}?",
            "What major events took place in {x}?",
            "What was important about {x}?",
            "Which key events happened in {x}?",
            "Tell me what happened in {x}.",
        ],
        ["1066", "1492", "1789", "1914", "1945", "1969", "1989"],
    ),
    (
        "history",
        "opposite",
        [
            "What caused the {x} of the Roman Empire?",
            "Why did the Roman Empire {x}?",
            "What led to the {x} of the Roman Empire?",
            "Which factors drove the Roman Empire's {x}?",
            "Explain the causes behind the Roman Empire's {x}.",
        ],
        ["rise", "fall"],
    ),
    (
        "history",
        "entity",
        [
            "When did {x} end?",
            "In what year did {x} end?",
            "What year marked the end of {x}?",
            "When was the end of {x}?",
            "{x} ended in which year?",
        ],
        ["World War I", "World War II", "the Cold War", "the Korean War", "the Vietnam War"],
    ),
    (
        "sports",
        "entity",
        [
            "Who won the {x} World Cup?",
            "Which country won the {x} World Cup?",
            "Who were the {x} World Cup champions?",
            "Which team took the {x} World Cup?",
            "The {x} World Cup was won by whom?",
        ],
        ["2018", "2014", "2010", "2006", "2022", "1998"],
    ),
    (
        "sports",
        "entity",
        [
            "How many players are on a {x} team?",
            "How many players does a {x} team have?",
            "What's the number of players on a {x} team?",
            "A {x} team has how many players?",
            "How big is a {x} team?",
        ],
        ["soccer", "basketball", "volleyball", "rugby", "hockey", "baseball", "cricket"],
    ),
    (
        "sports",
        "opposite",
        [
            "How do I improve my {x} in tennis?",
            "What drills improve a tennis {x}?",
            "How can I get a better tennis {x}?",
            "Tips to improve my {x} in tennis?",
            "In tennis, how do I make my {x} better?",
        ],
        ["serve", "backhand", "forehand", "volley"],
    ),
    (
        "language",
        "entity",
        [
            "How do you say thank you in {x}?",
            "What is thank you in {x}?",
            "How do I say thanks in {x}?",
            "In {x}, how do you say thank you?",
            "What's the {x} word for thank you?",
        ],
        ["Spanish", "German", "Japanese", "Korean", "Italian", "Swahili", "Dutch"],
    ),
    (
        "language",
        "opposite",
        [
            "Translate 'good morning' into {x}.",
            "How do you say good morning in {x}?",
            "What is good morning in {x}?",
            "Good morning in {x}: how is it said?",
            "What's the {x} greeting for good morning?",
        ],
        ["French", "Portuguese", "Russian", "Chinese", "Arabic", "Hindi"],
    ),
    (
        "language",
        "opposite",
        [
            "What is the {x} of 'generous'?",
            "Give me the {x} of the word generous.",
            "Which word is the {x} of generous?",
            "What's a {x} for 'generous'?",
            "Tell me the {x} of generous.",
        ],
        ["synonym", "antonym"],
    ),
    (
        "business",
        "opposite",
        [
            "How do I write a {x} letter?",
            "What should a {x} letter include?",
            "How can I write a good {x} letter?",
            "Tips for writing a {x} letter?",
            "What's the best way to write a {x} letter?",
        ],
        ["cover", "resignation", "recommendation", "complaint"],
    ),
    (
        "business",
        "number",
        [
            "How much notice should I give with {x} years at a company?",
            "With {x} years at my job, how much notice do I give?",
            "What notice period applies after {x} years of employment?",
            "After {x} years at a company, how much notice is fair?",
            "How long a notice period after {x} years on the job?",
        ],
        ["2", "5", "10", "1", "20"],
    ),
    (
        "databases",
        "opposite",
        [
            "What is a {x} join in SQL?",
            "Explain a SQL {x} join.",
            "How does a {x} join work in SQL?",
            "In SQL, what does a {x} join do?",
            "What's the meaning of a {x} join in SQL?",
        ],
        ["left", "right", "inner", "full outer", "cross"],
    ),
    (
        "databases",
        "verb",
        [
            "How do I {x} a column in PostgreSQL?",
            "What's the SQL to {x} a column in Postgres?",
            "How can I {x} a table column in PostgreSQL?",
            "In PostgreSQL, how do I {x} a column?",
            "Postgres: how to {x} a column?",
        ],
        ["add", "drop", "rename", "index"],
    ),
    (
        "databases",
        "opposite",
        [
            "How do I {x} a database in MySQL?",
            "What's the command to {x} a MySQL database?",
            "How can I {x} my MySQL database?",
            "In MySQL, how do I {x} a database?",
            "MySQL: how to {x} a database?",
        ],
        ["backup", "restore", "drop", "create"],
    ),
    (
        "security",
        "opposite",
        [
            "How do I {x} a file with GPG?",
            "What's the command to {x} a file using GPG?",
            "How can I {x} files with gpg?",
            "Using GPG, how do I {x} a file?",
            "GPG: how to {x} a file?",
        ],
        ["encrypt", "decrypt", "sign"],
    ),
    (
        "security",
        "opposite",
        [
            "How do I {x} a user account on Linux?",
            "What's the command to {x} a Linux user account?",
            "How can I {x} a user on Linux?",
            "On Linux, how do I {x} a user account?",
            "Linux: how to {x} a user?",
        ],
        ["lock", "unlock", "delete", "create"],
    ),
    (
        "security",
        "negation",
        [
            "Is it safe to {x} share my API key in a public repository?",
            "Can I {x} put my API key in a public repo safely?",
            "Is committing my API key to a public repository {x} safe?",
            "Should I {x} store an API key in a public repo?",
            "Would it be {x} safe to push my API key to a public repository?",
        ],
        ["", "never"],
    ),
    (
        "networking",
        "opposite",
        [
            "How do I open port {x} on Ubuntu?",
            "What's the command to open port {x} on Ubuntu?",
            "How can I allow traffic on port {x} in Ubuntu?",
            "On Ubuntu, how do I open port {x}?",
            "Ubuntu firewall: how to open port {x}?",
        ],
        ["22", "80", "443", "8080", "3306"],
    ),
    (
        "networking",
        "opposite",
        [
            "How do I find my {x} IP address?",
            "What's the way to see my {x} IP address?",
            "How can I check my {x} IP?",
            "Where do I find my {x} IP address?",
            "How do I look up my {x} IP address?",
        ],
        ["public", "private", "IPv6"],
    ),
    (
        "home",
        "entity",
        [
            "How do I remove {x} stains from a carpet?",
            "What's the best way to get {x} stains out of carpet?",
            "How can I clean {x} stains off my carpet?",
            "Carpet {x} stains: how do I remove them?",
            "What removes {x} stains from carpets?",
        ],
        ["wine", "coffee", "blood", "ink", "grease", "mud"],
    ),
    (
        "home",
        "number",
        [
            "How often should I water a cactus in a {x} degree room?",
            "In a {x} degree room, how often do I water a cactus?",
            "How frequently does a cactus need water at {x} degrees?",
            "Watering a cactus at {x} degrees: how often?",
            "At {x} degrees indoors, how often should a cactus be watered?",
        ],
        ["15", "20", "25", "30"],
    ),
    (
        "home",
        "opposite",
        [
            "Should I set my thermostat higher or lower in {x}?",
            "What thermostat setting is best in {x}?",
            "How should I set the thermostat during {x}?",
            "In {x}, what temperature should the thermostat be?",
            "Best thermostat temperature for {x}?",
        ],
        ["summer", "winter", "spring", "autumn"],
    ),
    (
        "pets",
        "entity",
        [
            "Can {x} eat chocolate?",
            "Is chocolate safe for {x}?",
            "Is it okay to give {x} chocolate?",
            "Is chocolate bad for {x}?",
            "Should {x} be given chocolate?",
        ],
        ["dogs", "cats", "rabbits", "parrots", "hamsters", "horses"],
    ),
    (
        "pets",
        "number",
        [
            "How much should a {x} month old puppy eat?",
            "How much food does a {x} month old puppy need?",
            "What's the right amount of food for a {x} month old puppy?",
            "Feeding a {x} month old puppy: how much?",
            "How many cups a day for a puppy aged {x} months?",
        ],
        ["2", "3", "4", "6", "9"],
    ),
    (
        "cars",
        "opposite",
        [
            "How do I check my car's {x} pressure?",
            "What's the way to check {x} pressure in a car?",
            "How can I test the {x} pressure of my car?",
            "Car {x} pressure: how do I check it?",
            "How is a car's {x} pressure checked?",
        ],
        ["tyre", "oil", "brake fluid"],
    ),
    (
        "cars",
        "entity",
        [
            "How often should I change the oil in a {x}?",
            "What's the oil change interval for a {x}?",
            "When does a {x} need an oil change?",
            "How many miles between oil changes on a {x}?",
            "Oil change frequency for a {x}?",
        ],
        ["Toyota Corolla", "Honda Civic", "Ford F-150", "Tesla Model 3", "BMW 3 Series", "Subaru Outback"],
    ),
    (
        "music",
        "entity",
        [
            "How do I play a {x} chord on guitar?",
            "What's the fingering for a {x} chord on guitar?",
            "How can I play the {x} chord on a guitar?",
            "Guitar {x} chord: how is it played?",
            "Show me how to play {x} on the guitar.",
        ],
        ["C major", "G major", "D minor", "E minor", "A minor", "F major", "B flat"],
    ),
    (
        "music",
        "number",
        [
            "What tempo is {x} beats per minute?",
            "Is {x} BPM fast or slow?",
            "How fast is a song at {x} BPM?",
            "What does {x} beats per minute feel like?",
            "A {x} BPM song: what tempo is that?",
        ],
        ["60", "90", "120", "140", "180"],
    ),
    (
        "law",
        "entity",
        [
            "What is the legal drinking age in {x}?",
            "At what age can you drink legally in {x}?",
            "How old do you have to be to drink in {x}?",
            "In {x}, what's the drinking age?",
            "What's the minimum drinking age in {x}?",
        ],
        ["Germany", "Japan", "the United States", "Canada", "India", "Italy"],
    ),
    (
        "law",
        "negation",
        [
            "Is it legal to {x} record a phone call without consent?",
            "Can I {x} record a call without the other person knowing?",
            "Is recording a phone call without consent {x} allowed?",
            "Am I {x} allowed to record calls without consent?",
            "Would it be {x} legal to record a phone call secretly?",
        ],
        ["", "not"],
    ),
    (
        "education",
        "entity",
        [
            "How do I apply to study at {x}?",
            "What's the application process for {x}?",
            "How can I get admitted to {x}?",
            "What do I need to apply to {x}?",
            "Applying to {x}: what are the steps?",
        ],
        ["Oxford", "MIT", "Stanford", "ETH Zurich", "Harvard", "Cambridge", "Sorbonne"],
    ),
    (
        "education",
        "number",
        [
            "How many credits do I need for a {x} year degree?",
            "What credit total does a {x} year degree require?",
            "For a {x} year degree, how many credits are needed?",
            "Credits required for a {x} year bachelor's?",
            "How many credit hours make a {x} year degree?",
        ],
        ["3", "4", "2", "5"],
    ),
    (
        "cloud",
        "opposite",
        [
            "How do I {x} an EC2 instance?",
            "What's the way to {x} an EC2 instance in AWS?",
            "How can I {x} my EC2 instance?",
            "In AWS, how do I {x} an EC2 instance?",
            "AWS EC2: how to {x} an instance?",
        ],
        ["start", "stop", "terminate", "resize", "reboot"],
    ),
    (
        "cloud",
        "entity",
        [
            "How do I deploy a container to {x}?",
            "What's the way to deploy a Docker container on {x}?",
            "How can I run my container on {x}?",
            "Deploying a container to {x}: how?",
            "On {x}, how do I deploy a container?",
        ],
        ["AWS", "Azure", "Google Cloud", "Heroku", "Fly.io", "DigitalOcean"],
    ),
    (
        "cloud",
        "opposite",
        [
            "How do I scale a Kubernetes deployment {x}?",
            "What's the command to scale {x} a k8s deployment?",
            "How can I scale my Kubernetes deployment {x}?",
            "Kubernetes: scaling a deployment {x}, how?",
            "In Kubernetes, how do I scale a deployment {x}?",
        ],
        ["up", "down"],
    ),
    (
        "data",
        "opposite",
        [
            "How do I find the {x} value in a pandas column?",
            "What's the way to get the {x} of a pandas column?",
            "How can I compute a pandas column's {x}?",
            "In pandas, how do I get the {x} of a column?",
            "pandas: {x} value of a column, how?",
        ],
        ["maximum", "minimum", "mean", "median"],
    ),
    (
        "data",
        "opposite",
        [
            "How do I drop {x} in a pandas DataFrame?",
            "What's the way to remove {x} from a pandas DataFrame?",
            "How can I delete {x} in pandas?",
            "In pandas, how do I drop {x}?",
            "pandas DataFrame: dropping {x}, how?",
        ],
        ["rows", "columns", "duplicates"],
    ),
    (
        "shopping",
        "date",
        [
            "Is the supermarket open on {x}?",
            "Are grocery stores open on {x}?",
            "Can I buy groceries on {x}?",
            "On {x}, are supermarkets open?",
            "Do supermarkets open their doors on {x}?",
        ],
        ["Christmas Day", "New Year's Day", "Easter Sunday", "Thanksgiving", "Boxing Day"],
    ),
    (
        "shopping",
        "negation",
        [
            "Can I return an item {x} a receipt?",
            "Is it possible to return something {x} the receipt?",
            "Will a store accept a return {x} a receipt?",
            "Returning an item {x} a receipt: allowed?",
            "Do shops take returns {x} a receipt?",
        ],
        ["with", "without"],
    ),
    (
        "scheduling",
        "date",
        [
            "Schedule a meeting with the design team on {x}.",
            "Set up a meeting with the design team for {x}.",
            "Book a design team meeting on {x}.",
            "Can you arrange a meeting with the design team on {x}?",
            "Put a meeting with the design team in the calendar for {x}.",
        ],
        ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"],
    ),
    (
        "scheduling",
        "number",
        [
            "Set a timer for {x} minutes.",
            "Start a {x} minute timer.",
            "Can you time {x} minutes for me?",
            "Please set a {x}-minute timer.",
            "Count down {x} minutes.",
        ],
        ["5", "10", "15", "20", "25", "30"],
    ),
    (
        "environment",
        "opposite",
        [
            "Is {x} energy better for the environment?",
            "How green is {x} energy?",
            "What is the environmental impact of {x} energy?",
            "Is {x} power environmentally friendly?",
            "How does {x} energy affect the environment?",
        ],
        ["nuclear", "solar", "wind", "coal", "hydro"],
    ),
    (
        "parenting",
        "number",
        [
            "How many hours should a {x} year old sleep?",
            "How much sleep does a {x} year old need?",
            "What's the recommended sleep for a {x} year old child?",
            "A {x} year old needs how many hours of sleep?",
            "How long should a {x}-year-old sleep each night?",
        ],
        ["2", "4", "6", "10", "14"],
    ),
    (
        "writing",
        "opposite",
        [
            "When should I use the {x} voice in writing?",
            "Is the {x} voice good in writing?",
            "When is {x} voice appropriate in an essay?",
            "Should my writing use the {x} voice?",
            "In writing, when does the {x} voice work best?",
        ],
        ["active", "passive"],
    ),
    (
        "transport",
        "entity",
        [
            "How do I get from the airport to the city centre in {x}?",
            "What's the best way from the airport into {x}?",
            "How can I travel from the airport to downtown {x}?",
            "Airport to city centre in {x}: what's the best route?",
            "In {x}, how do I reach the city centre from the airport?",
        ],
        ["Madrid", "Amsterdam", "Prague", "Vienna", "Dublin", "Istanbul", "Seoul"],
    ),
    (
        "transport",
        "opposite",
        [
            "What time is the last train {x} Boston?",
            "When does the last train {x} Boston leave?",
            "What's the latest train {x} Boston tonight?",
            "Last train {x} Boston: what time?",
            "How late does the final train {x} Boston run?",
        ],
        ["to", "from"],
    ),
]

# pairs drawn per family (at most: a small family runs out of distinct pairs first)
GENERAL_PARAPHRASES, GENERAL_NEAR_MISSES = 7, 5
PARAPHRASES, NEAR_MISSES = 90, 200
TEST_SHARE = 0.4


def _fill(template: str, **slots: str) -> str:
    text = template
    for name, value in slots.items():
        text = text.replace("{" + name + "}", value)
    text = re.sub(r"\s+([?.])$", r"\1", " ".join(text.split()))
    return text[0].upper() + text[1:]


def _hash(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")


def _splits(groups: dict[str, list[str]]) -> dict[str, str]:
    """Within each class, the 40% of families with the smallest hash are test (at least one)."""
    out: dict[str, str] = {}
    for names in groups.values():
        ordered = sorted(names, key=_hash)
        cut = max(1, round(len(ordered) * TEST_SHARE))
        for i, name in enumerate(ordered):
            out[name] = "test" if i < cut else "train"
    return out


def _general(rng: random.Random, split: dict[str, str]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for index, (topic, kind, phrasings, values) in enumerate(FAMILIES):
        name = f"general:{index}"
        base = {"family": name, "topic": topic, "split": split[name]}
        seen: set[tuple[str, str]] = set()
        made = 0
        while made < GENERAL_PARAPHRASES:
            value = rng.choice(values)
            i, j = rng.sample(range(len(phrasings)), 2)
            a, b = _fill(phrasings[i], x=value), _fill(phrasings[j], x=value)
            if (a, b) in seen or a == b:
                continue
            seen.add((a, b))
            rows.append({**base, "a": a, "b": b, "label": 1, "kind": "paraphrase", "class": "general"})
            made += 1
        made = 0
        while made < GENERAL_NEAR_MISSES:
            v, w = rng.sample(values, 2)
            i = rng.randrange(len(phrasings))
            j = i if rng.random() < 0.7 else rng.randrange(len(phrasings))
            a, b = _fill(phrasings[i], x=v), _fill(phrasings[j], x=w)
            if (a, b) in seen or a == b:
                continue
            seen.add((a, b))
            rows.append({**base, "a": a, "b": b, "label": 0, "kind": kind, "class": kind})
            made += 1
    return rows


def _render(family: Family, template: str, value: str, context: str) -> str:
    if family.swap:
        first, second = value.split("|")
        return _fill(template, a=first, b=second, y=context)
    return _fill(template, x=value, y=context)


def _mutated(family: Family, value: str, rng: random.Random) -> str | None:
    """The value with one of its tokens swapped for a confusable one (``a << 2`` -> ``a >> 2``)."""
    tokens = value.split(" ")
    spots = [(i, t) for i, t in enumerate(tokens) if t in family.mutate]
    spots += [(-1, k) for k in family.mutate if k in value and k not in tokens and len(k) > 1]
    if not spots:
        return None
    i, token = rng.choice(spots)
    other = rng.choice(family.mutate[token])
    if i >= 0:
        return " ".join([*tokens[:i], other, *tokens[i + 1 :]])
    return value.replace(token, other, 1)


def _near_value(family: Family, spellings: list[str], rng: random.Random) -> str | None:
    value = rng.choice(spellings)
    if family.swap:
        first, second = value.split("|")
        return f"{second}|{first}"
    if family.mutate and rng.random() < 0.8:
        mutated = _mutated(family, value, rng)
        if mutated is not None and mutated != value:
            return mutated
    others = [v for v in family.values if v is not spellings]
    return rng.choice(rng.choice(others)) if others else None


def _family(name: str, family: Family, split: str) -> list[dict[str, object]]:
    rng = random.Random(_hash(name))
    base = {"family": name, "topic": family.topic, "split": split}
    rows: list[dict[str, object]] = []
    seen: set[tuple[str, str]] = set()
    n = len(family.phrasings)
    for label, target in ((1, PARAPHRASES), (0, NEAR_MISSES if family.near else 0)):
        made = attempts = 0
        while made < target and attempts < target * 20:
            attempts += 1
            spellings = rng.choice(family.values)
            context = rng.choice(family.contexts)
            i = rng.randrange(n)
            if label:
                j = rng.randrange(n)
                a = _render(family, family.phrasings[i], rng.choice(spellings), context)
                b = _render(family, family.phrasings[j], rng.choice(spellings), context)
            else:
                other = _near_value(family, spellings, rng)
                if other is None:
                    break
                # mostly the same phrasing with only the value changed: the hardest near miss
                j = i if rng.random() < 0.7 else rng.randrange(n)
                a = _render(family, family.phrasings[i], rng.choice(spellings), context)
                b = _render(family, family.phrasings[j], other, context)
            if a == b or (a, b) in seen:
                continue
            seen.add((a, b))
            kind = "paraphrase" if label else str(family.near)
            rows.append(
                {
                    **base,
                    "a": a,
                    "b": b,
                    "label": label,
                    "kind": kind,
                    "class": family.positive if label else family.near,
                }
            )
            made += 1
    return rows


def build() -> list[dict[str, object]]:
    """Every labelled pair, train and test (deterministic)."""
    natural = [*NATURAL, *NATURAL_ADDED]
    groups: dict[str, list[str]] = {
        "general": [f"general:{i}" for i in range(len(FAMILIES))],
        "natural": [f"natural:{i}" for i in range(len(NATURAL))],
        # the families added later are split among themselves: the earlier ones keep their split
        "natural/added": [f"natural:{i}" for i in range(len(NATURAL), len(natural))],
    }
    names = []
    for index, family in enumerate([*ALL, *ADDED]):
        name = f"{family.near or family.positive}:{index}"
        names.append(name)
        added = "/added" if index >= len(ALL) else ""
        groups.setdefault(f"{family.near}/{family.positive}{added}", []).append(name)
    split = _splits(groups)
    rows = _general(random.Random(20261125), split)
    for name, family in zip(names, [*ALL, *ADDED], strict=True):
        rows.extend(_family(name, family, split[name]))
    for index, phrasings in enumerate(natural):
        name = f"natural:{index}"
        for a in phrasings:
            for b in phrasings:
                if a != b:
                    rows.append(
                        {
                            "family": name,
                            "topic": "everyday",
                            "split": split[name],
                            "a": a,
                            "b": b,
                            "label": 1,
                            "kind": "paraphrase",
                            "class": "natural",
                        }
                    )
    # unrelated: two families of the same split, so no test question is paired with a train one
    rng = random.Random(7)
    for part in ("train", "test"):
        questions: dict[str, list[str]] = {}
        for r in rows:
            if r["split"] == part:
                questions.setdefault(str(r["family"]), []).append(str(r["a"]))
        families = sorted(questions)
        for _ in range(len(families) * 10):
            f, g = rng.sample(families, 2)
            rows.append(
                {
                    "family": f,
                    "topic": "mixed",
                    "split": part,
                    "a": rng.choice(questions[f]),
                    "b": rng.choice(questions[g]),
                    "label": 0,
                    "kind": "unrelated",
                    "class": "unrelated",
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="write the pairs here as JSON lines")
    args = parser.parse_args()
    rows = build()
    if args.out is not None:
        with args.out.open("w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    counts: dict[tuple[str, int, str], int] = {}
    for row in rows:
        key = (str(row["class"]), int(row["label"]), str(row["split"]))  # type: ignore[call-overload]
        counts[key] = counts.get(key, 0) + 1
    families = {(str(r["class"]), str(r["split"]), str(r["family"])) for r in rows}
    print(
        f"{len(rows)} pairs, {len({str(r['a']) for r in rows} | {str(r['b']) for r in rows})} distinct questions"
    )
    print("| class | label | train pairs (families) | test pairs (families) |")
    print("|---|---|---|---|")
    for cls, label in sorted({(c, lab) for c, lab, _ in counts}, key=lambda k: (-k[1], k[0])):
        cells = [
            f"{counts.get((cls, label, s), 0)} ({sum(1 for f in families if f[:2] == (cls, s))})"
            for s in ("train", "test")
        ]
        print(f"| {cls} | {'paraphrase' if label else 'different'} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
