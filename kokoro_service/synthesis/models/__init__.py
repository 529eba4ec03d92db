"""Model weights: where they come from (:mod:`.sources`), the embedded import
(:mod:`.embedded`, :mod:`.onnx_import`) and random-weight checkpoints (:mod:`.checkpoint`)."""
