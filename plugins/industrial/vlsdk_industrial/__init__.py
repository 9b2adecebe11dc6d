"""vlsdk industrial plugin (install with ``pip install "vlsdk[industrial]"``).

Layout: ``plugin.py`` holds the hooks only (entry point ``vlsdk.plugins: industrial``);
``experts.py`` the pure-torch experts (``industrial.pcb_defect``). Nothing heavy is imported here.
"""
