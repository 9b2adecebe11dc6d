"""vlsdk industrial plugin (install with ``pip install "vlsdk[industrial]"``).

Layout: ``plugin.py`` holds the hooks only (entry point ``vlsdk.plugins: industrial``);
``experts.py`` the pure-torch experts (``industrial.pcb_defect``); one module per concept besides
(``deeppcb``, ``voc``, ``coco``, ``folder``, ``transforms``, ``synth``, ``metrics``, ``task``,
``predict``, ``throughput``, ``cli``). Nothing heavy is imported here.
"""
