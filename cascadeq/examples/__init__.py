"""Example models for cascadeq; builders live in submodules so importing this needs no sklearn."""
