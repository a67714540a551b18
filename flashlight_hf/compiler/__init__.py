"""The attention compiler: capture -> ir -> rewrite -> codegen -> runtime (see DESIGN.md).

Each stage is its own module; data flows one way through them.
"""
