"""Inference with a trained CMEDL model: load every part (``load_cmedl_model``) and translate CT to pseudo-MRI
(``export_pseudo_mri``, ``export_pseudo_mri_batch``; CLI ``nnunet_cmedl export-pmri``).

Imports are lazy so that ``import nnunet_cmedl.inference`` stays cheap (no torch / nnU-Net until used)."""

__all__ = ["CMEDLModel", "load_cmedl_model", "export_pseudo_mri", "export_pseudo_mri_batch", "translate_case"]


def __getattr__(name):
    if name in ("CMEDLModel", "load_cmedl_model"):
        from nnunet_cmedl.inference import cmedl_model
        return getattr(cmedl_model, name)
    if name in ("export_pseudo_mri", "export_pseudo_mri_batch", "translate_case"):
        from nnunet_cmedl.inference import export_pmri
        return getattr(export_pmri, name)
    raise AttributeError(f"module 'nnunet_cmedl.inference' has no attribute {name!r}")
