"""The operator view in the browser (``sagalease ui``; the ``[ui]`` extra)."""
