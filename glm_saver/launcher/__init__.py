"""The launcher: everything that starts processes rather than serves requests.

The embedded local model's install (`local_model`), how its server is run (`local_server`, and
`serve_prebuilt` for the xllamacpp wheel), child processes (`processes`), `glm-saver up` (`up`) and
the chat templates. The runtime (plugin.py and what it imports) never imports from here.
"""
