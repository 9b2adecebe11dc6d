"""vlsdk medical plugin (install with ``pip install "vlsdk[medical]"``).

Layout: ``plugin.py`` holds the hooks only (entry point ``vlsdk.plugins: medical``);
``experts.py`` the pure-torch experts (``medical.lesion``); ``dicom.py`` and ``nifti.py`` the
readers; ``dataset.py``, ``transforms.py``, ``synth.py`` the data side; ``metrics.py``,
``inference.py`` evaluation; ``task.py``, ``evaluation.py`` and ``cli.py`` the BraTS task and the ``vlsdk``
subcommands. Nothing heavy is imported here.
"""
