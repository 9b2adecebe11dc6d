"""vlsdk industrial plugin."""
