"""ASGI layers the plugin puts in front of LiteLLM's app: the body guard (a JSON body that is not an
object gets a clean 400), the keep-alive layer (a streamed cascade still deciding opens early and
sends SSE comments) and the metrics refusal (a key refused on /metrics gets OpenAI's error shape).
stack.py says which requests they see and installs them once."""
