"""Network and folder sources only: they fetch bytes and hand them to the core."""
