"""``torch.compile(..., backend="flashlight")``: the TorchDynamo backend (``backend.py``) and
the search for attention regions inside a larger graph (``regions.py``)."""
