"""The demo: a built-in model server and a scripted tour of decisions."""
