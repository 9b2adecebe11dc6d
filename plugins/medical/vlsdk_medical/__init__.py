"""vlsdk medical plugin (install with ``pip install "vlsdk[medical]"``).

Layout: ``plugin.py`` holds the hooks only (entry point ``vlsdk.plugins: medical``);
``experts.py`` the pure-torch experts (``medical.lesion``). Nothing heavy is imported here.
"""
