"""The app's Gradio page, one module per tab (``text``, ``reference``, ``customize``, ``gallery``) over the shared
pieces in ``common`` (the status line, the result panel, the edit tab's layout and events); ``page`` assembles and
serves it. It works through ``threedpe.serving``; nothing in the package imports it."""
