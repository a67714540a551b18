"""The Transformers front door: ``attn_implementation="flashlight"``.

- :mod:`.interface`: the functions registered in Transformers' ``AttentionInterface`` and
  ``AttentionMaskInterface``, :func:`~.interface.enable` / :func:`~.interface.disable`;
- :mod:`.masks`: masks as structure (what the mask function hands the attention function);
- :mod:`.registry`: the family table, one entry per model family, and the lookup of the eager
  attention a family runs;
- :mod:`.layers`: the compiled program of one attention layer configuration (keyword
  arguments, caching, GQA rows in decode steps);
- :mod:`.programs`, :mod:`.differential`: attention programs in plain PyTorch traced instead of
  a family's own code (the generic Llama-style one; DiffLlama's differential attention);
- :mod:`.hook`: runs a function once a module has finished importing (how ``import
  flashlight_hf`` registers the backend without importing Transformers).

This package's ``__init__`` imports nothing (``import flashlight_hf`` loads :mod:`.hook` from
here); within it, ``import transformers`` is an absolute import and means Hugging Face's.
``docs/transformers.md`` follows one call through all of it.
"""
