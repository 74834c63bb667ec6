# LiteLLM loads this file by path (not as a package module), so it stays a thin shim with absolute
# imports; everything lives in the installed `glm_saver` package. A bad `glm_saver:` section raises
# here and stops the proxy's startup with a message naming the key.
from glm_saver.plugin import plugin_from_proxy_config

proxy_handler_instance = plugin_from_proxy_config()
