"""vlsdk driving plugin (install with ``pip install "vlsdk[driving]"``).

Layout: ``plugin.py`` holds the hooks only (entry point ``vlsdk.plugins: driving``);
``experts.py`` the pure-torch experts (``driving.lidar``). Nothing heavy is imported here.
"""
