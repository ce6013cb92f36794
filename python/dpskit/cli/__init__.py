"""The ``dpskit`` command line (``dpskit.cli:main``, also ``python -m dpskit``).

One module per command group, over shared helpers that import no command module::

    app.py       the top-level parser and main()
    certs.py     dpskit certs (root, intermediate, device, devices, verification, csr, ...)
    demo.py      dpskit demo
    cloud.py     dpskit cloud, dpskit dps
    device.py    dpskit device
    doctor.py    dpskit doctor (device, error)
    fleet.py     dpskit fleet
    emulator.py  dpskit emulator

    targets.py   where a command acts: a local cloud's folder or Azure (--azure options)
    files.py     the certificate folder: file names, loading an issuer, writing files
    output.py    aligned fields, paths, times, the help formatter
    argtypes.py  argument types (positive_int, ...)
"""

from __future__ import annotations

from dpskit.cli.app import main

__all__ = ["main"]
