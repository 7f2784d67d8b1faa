"""The bundled demo model's corpus and training: :mod:`~futurefill.demo.data` (Python's
documentation topics as bytes, split and batched; the byte-level encoding) and
:mod:`~futurefill.demo.train` (``futurefill train``: how ``futurefill/checkpoints/pydoc-stu`` was
made). The model itself is a :class:`~futurefill.ConvLM`; :func:`futurefill.load_pretrained`
loads it."""
