"""pygame only: the window, the zones (header, main, ticker), text, images and the splash."""
