"""A torchrun entry point for the multi-process tests: rank-specific faults (a node without the data, a
node with other arguments), then the normal CLI. Usage: torchrun ... tests/dist_wrapper.py FAULT train ..."""

import os
import sys

from resnet5m.cli.main import main

fault, argv = sys.argv[1], sys.argv[2:]
if os.environ.get("RANK") == "1":
    if fault == "no-data":
        os.environ["RESNET5M_DATA"] = "/nonexistent/cifar10.npz"
    elif fault == "other-config":
        argv += ["--set", "optimizer.lr=0.07"]
sys.exit(main(argv))
