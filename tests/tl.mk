# TL1/TL2 layout tests (tests/test_tl.c) are registered here by their owner.
