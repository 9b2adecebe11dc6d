"""vlsdk industrial plugin (install with ``pip install "vlsdk[industrial]"``).

Layout: ``plugin.py`` holds the hooks only (entry point ``vlsdk.plugins: industrial``);
``experts.py`` the pure-torch experts (``industrial.pcb_defect``); one module per concept besides
(``deeppcb``, ``voc``, ``coco``, ``folder``, ``transforms``, ``synth``, ``mixing``, ``metrics``,
``pipeline``, ``throughput``, ``cli``). Nothing heavy is imported here.
"""

import os

# albumentations asks PyPI for its latest version when imported (a network call, and a warning
# offline); vlsdk pins the 2.0.x line, so skip that unless the user set the variable.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
