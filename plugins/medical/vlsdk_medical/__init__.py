"""vlsdk medical plugin."""
