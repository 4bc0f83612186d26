"""Wire formats: one module per format, both directions, around the internal shape (OpenAI chat completions).

``anthropic``: Anthropic Messages <-> chat (a client on ``/v1/messages``; an Anthropic upstream).
``responses``: OpenAI Responses <-> chat (a client on ``/v1/responses``).
``chunks``: reading the internal stream's chunks, for both stream writers.
``reasoning``: how reasoning effort, thinking budgets and their kin map onto each other.
Gemini's and Bedrock's formats are only ever upstreams; their maps live beside their adapters.
"""
