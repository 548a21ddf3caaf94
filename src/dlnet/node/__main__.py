"""`python -m dlnet.node` runs the dlnet command (how the testnet starts its processes)."""

from dlnet.node.cli import main

main()
