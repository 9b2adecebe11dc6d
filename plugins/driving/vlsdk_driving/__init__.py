"""vlsdk driving plugin."""
