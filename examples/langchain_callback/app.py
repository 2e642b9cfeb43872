"""A LangChain chain on Lambda with posthog-python's callback handler, sending through
posthog-lambda's extension.

The chain's runs become spans and generations of the invocation's trace, under the span that
was running when it was invoked. No flush, no shutdown. ChatOpenAI reads OPENAI_API_KEY (and
OPENAI_BASE_URL) itself. Bundle ``posthog``, ``langchain-core`` and ``langchain-openai`` with
the function; posthog_lambda comes from the layer.
"""

from __future__ import annotations

from typing import Any

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI
from posthog.ai.langchain import CallbackHandler

from posthog_lambda import posthog_client, posthog_traced, span

chain = (
    ChatPromptTemplate.from_messages(
        [("system", "You answer questions about {topic} in one sentence."), ("user", "{question}")]
    )
    | ChatOpenAI(model="gpt-4o-mini")
    | StrOutputParser()
)


@posthog_traced(name="ask", distinct_id=lambda event, context: event.get("user"))
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    with span("answer", input=event["question"]):
        # A handler per invocation: LangChain's handler keeps per-run state.
        callbacks = [CallbackHandler(client=posthog_client())]
        answer = chain.invoke(
            {"topic": event.get("topic", "AWS Lambda"), "question": event["question"]},
            config={"callbacks": callbacks},
        )
    return {"answer": answer}
