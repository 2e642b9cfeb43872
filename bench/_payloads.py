"""The payloads real LLM apps record, for every benchmark that says "realistic": a retrieval
query and its results (dicts with short lists), chat messages with a system prompt, and an
assistant message with a tool call. Sizes are those of a small RAG handler, not of a toy."""

from __future__ import annotations

from typing import Any

QUERY: dict[str, Any] = {
    "query": "what is the refund policy for orders shipped abroad?",
    "k": 4,
    "filters": {"lang": "en", "source": ["help-center", "faq"]},
}
RESULTS: dict[str, Any] = {
    "documents": [
        "Refunds for international orders are issued once the parcel is back with us.",
        "Shipping fees are refunded only for goods that arrived damaged.",
        "Customs duties and import taxes cannot be refunded by us.",
        "Refunds take 5 to 10 business days to reach the original payment method.",
    ],
    "scores": [0.91, 0.87, 0.82, 0.79],
}
MESSAGES: list[dict[str, Any]] = [
    {
        "role": "system",
        "content": "You are a helpful support assistant. Answer only from the documents given, "
        "and say so when they do not cover the question.",
    },
    {
        "role": "user",
        "content": "Documents:\n1. Refunds for international orders are issued once the parcel is back with us.\n"
        "2. Shipping fees are refunded only for goods that arrived damaged.\n\n"
        "Question: what is the refund policy for orders shipped abroad?",
    },
]
CHOICES: list[dict[str, Any]] = [
    {
        "role": "assistant",
        "content": "For orders shipped abroad the refund is issued once the parcel is back with us; "
        "shipping fees are refunded only if the goods arrived damaged.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "lookup_order", "arguments": '{"order_id": "A-1042"}'},
            }
        ],
    }
]
