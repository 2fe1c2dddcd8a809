"""Random patches of the preprocessed unpaired volumes (MRI or CT), batched and augmented like the labelled training
batches.

``get_unpaired_dataloader(trainer)`` finds the trainer's unpaired folder (``find_unpaired_folder``) and reads
everything from an initialised ``nnUNetTrainer`` (or subclass): batch
size, patch size, the initial (rotation-safe) patch size, rotation, dummy-2D and mirroring settings, and the
trainer's own ``get_training_transforms`` hook, applied to an image-only dict (batchgeneratorsv2 transforms skip an
absent 'segmentation'). Batches are ``{'data': float32 tensor (B, 1, *patch_size), 'keys': case names}``, produced in
background worker processes like nnU-Net's own training loader (``NonDetMultiThreadedAugmenter`` with
``get_allowed_n_proc_DA()`` workers, ``SingleThreadedAugmenter`` when ``nnUNet_n_proc_DA=0``).

The batches are endless and random; stop background workers with ``augmenter._finish()`` as nnU-Net's
``on_train_end`` does for its own loaders.
"""
import os

import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgenerators.utilities.file_and_folder_operations import load_pickle
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from threadpoolctl import threadpool_limits

from mri_unpaired.errors import UserInputError
from mri_unpaired.modality import DEFAULT_MODALITY, MODALITIES, labelled_modality_guess, other_modality
from mri_unpaired.paths import CASE_DATA_ENDING, case_files, read_manifest, unpaired_folder
from mri_unpaired.plans import geometry_hash


def list_unpaired_cases(folder: str) -> list:
    """Case names of a preprocessed unpaired folder: those of its manifest whose files exist (the manifest is written
    last, so a case is listed only once complete); without a manifest, every non-hidden ``<case>.b2nd`` with its
    ``.pkl``."""
    if not os.path.isdir(folder):
        return []
    m = read_manifest(folder)
    if m is not None:
        names = list(m["cases"].keys())
    else:
        names = [f[:-len(CASE_DATA_ENDING)] for f in os.listdir(folder)
                 if f.endswith(CASE_DATA_ENDING) and not f.startswith(".")]
    return sorted(c for c in names if all(os.path.isfile(f) for f in case_files(folder, c)))


class UnpairedDataset:
    """Preprocessed unpaired cases (image only), opened memory-mapped like ``nnUNetDatasetBlosc2``."""

    def __init__(self, folder: str, identifiers=None):
        import blosc2
        self.source_folder = folder
        self.identifiers = sorted(list_unpaired_cases(folder) if identifiers is None else identifiers)
        blosc2.set_nthreads(1)
        # mmap does not work on Windows (as in nnUNetDatasetBlosc2)
        self.mmap_kwargs = {} if os.name == "nt" else {"mmap_mode": "r"}

    def __len__(self):
        return len(self.identifiers)

    def __getitem__(self, identifier):
        return self.load_case(identifier)

    def load_case(self, identifier):
        """The (1, *shape) Blosc2 array of a case (not decompressed until sliced)."""
        import blosc2
        return blosc2.open(urlpath=case_files(self.source_folder, identifier)[0], mode="r",
                           dparams={"nthreads": 1}, **self.mmap_kwargs)

    def load_properties(self, identifier) -> dict:
        return load_pickle(case_files(self.source_folder, identifier)[1])


class _NoLabels:
    """What nnUNetDataLoader.__init__ reads from a LabelManager, for image-only data."""
    all_labels = []
    has_ignore_label = False


class UnpairedDataLoader(nnUNetDataLoader):
    """nnU-Net's training data loader without labels: uniform random patches (nnU-Net's get_bbox and padding, no
    foreground oversampling), 2D configurations as random slices (pseudo-3D with a singleton, like nnU-Net), the
    transforms applied per sample to ``{'image': ...}``."""

    def __init__(self, data: UnpairedDataset, batch_size: int, patch_size, final_patch_size, transforms=None,
                 sampling_probabilities=None):
        super().__init__(data, batch_size, patch_size, final_patch_size, _NoLabels(),
                         oversample_foreground_percent=0.0, sampling_probabilities=sampling_probabilities,
                         pad_sides=None, probabilistic_oversampling=False, transforms=transforms)

    def generate_train_batch(self):
        selected_keys = self.get_indices()
        data_all = None
        with torch.no_grad():
            with threadpool_limits(limits=1, user_api=None):
                for j, key in enumerate(selected_keys):
                    data = self._data.load_case(key)
                    bbox_lbs, bbox_ubs = self.get_bbox(data.shape[1:], False, None)
                    bbox = [[a, b] for a, b in zip(bbox_lbs, bbox_ubs)]
                    cropped = torch.from_numpy(crop_and_pad_nd(data, bbox, 0)).float()
                    if self.patch_size_was_2d:
                        cropped = cropped[:, 0]
                    sample = self.transforms(**{"image": cropped})["image"] if self.transforms is not None \
                        else cropped
                    if data_all is None:
                        data_all = torch.empty((self.batch_size, *sample.shape), dtype=torch.float32)
                    data_all[j] = sample
        return {"data": data_all, "keys": selected_keys}


def make_unpaired_augmenter(folder: str, batch_size: int, patch_size, initial_patch_size=None, transforms=None,
                                num_processes: int = None, pin_memory: bool = False, identifiers=None,
                                num_cached: int = None, seeds=None):
    """The lower-level constructor (no trainer needed): an endless augmenter of unpaired batches from ``folder``.

    patch_size: final patch size (2 or 3 entries); initial_patch_size: the larger patch cropped before the spatial
    transform (defaults to patch_size); transforms: a batchgeneratorsv2 transform or None; num_processes: worker
    processes (default ``get_allowed_n_proc_DA()``; 0 gives a SingleThreadedAugmenter); seeds: one per worker
    process (None: unseeded)."""
    dataset = UnpairedDataset(folder, identifiers)
    if len(dataset) == 0:
        raise UserInputError(f"{folder}: no preprocessed unpaired cases")
    patch_size = [int(i) for i in patch_size]
    initial_patch_size = patch_size if initial_patch_size is None else [int(i) for i in initial_patch_size]
    if len(initial_patch_size) != len(patch_size):
        raise ValueError(f"initial_patch_size {initial_patch_size} and patch_size {patch_size} differ in length")
    dl = UnpairedDataLoader(dataset, int(batch_size), initial_patch_size, patch_size, transforms)
    n = get_allowed_n_proc_DA() if num_processes is None else int(num_processes)
    if n == 0:
        return SingleThreadedAugmenter(dl, None)
    return NonDetMultiThreadedAugmenter(data_loader=dl, transform=None, num_processes=n,
                                        num_cached=max(6, n // 2) if num_cached is None else num_cached, seeds=seeds,
                                        pin_memory=pin_memory, wait_time=0.002)


def preprocess_unpaired_command(trainer, modality: str) -> str:
    """The command that creates the unpaired folder a trainer reads."""
    pm = trainer.plans_manager
    plans = "" if pm.plans_name == "nnUNetPlans" else f" -p {pm.plans_name}"
    return (f"nnunet_cmedl preprocess-unpaired -d {pm.dataset_name} -c {trainer.configuration_name}{plans} "
            f"--modality {modality} -i /path/to/unpaired_{modality.lower()}_folder")


def find_unpaired_folder(trainer, modality: str = None):
    """``(folder, modality, why)`` of the unpaired volumes a trainer reads.

    ``modality`` (a trainer's ``unpaired_modality``) picks that modality's folder. Without it: the one unpaired folder
    that exists for the configuration; if both exist, the modality other than the labelled one (CT when the plans
    normalise the labelled channel with nnU-Net's CT scheme, MRI otherwise). ``why`` says which rule decided, for
    the training log."""
    if trainer.preprocessed_dataset_folder is None:
        raise UserInputError("environment variable nnUNet_preprocessed is not set; the trainer cannot find the "
                             "preprocessed unpaired volumes")
    labelled = labelled_modality_guess(trainer.configuration_manager.normalization_schemes)
    other = other_modality(labelled)
    if modality is not None:
        return unpaired_folder(trainer.preprocessed_dataset_folder, modality), modality, "the trainer's unpaired_modality"
    existing = [m for m in MODALITIES if os.path.isdir(unpaired_folder(trainer.preprocessed_dataset_folder, m))]
    if len(existing) == 1:
        return (unpaired_folder(trainer.preprocessed_dataset_folder, existing[0]), existing[0],
                "the only unpaired folder of this configuration")
    if not existing:
        folder = unpaired_folder(trainer.preprocessed_dataset_folder, other)
        raise UserInputError(f"{folder}: no preprocessed unpaired volumes for configuration "
                             f"{trainer.configuration_name}; create them with: "
                             f"{preprocess_unpaired_command(trainer, other)}")
    return (unpaired_folder(trainer.preprocessed_dataset_folder, other), other,
            f"both unpaired folders exist; the labelled channel is normalised as {labelled}")


def get_unpaired_dataloader(trainer, num_processes: int = None, seeds=None, modality: str = None):
    """Endless augmenter of unpaired batches with the labelled training loader's batch size, patch sizes and
    augmentation, from ``find_unpaired_folder(trainer, modality)``.

    Call it after ``trainer.initialize()`` (which sets ``trainer.batch_size``). The batches hold
    ``'data'`` (B, 1, *patch_size) float32 and ``'keys'``."""
    folder, modality, _why = find_unpaired_folder(trainer, modality)
    cmd = preprocess_unpaired_command(trainer, modality)
    if not os.path.isdir(folder):
        raise UserInputError(f"{folder}: no preprocessed unpaired {modality} for configuration "
                             f"{trainer.configuration_name}; create it with: {cmd}")
    if not list_unpaired_cases(folder):
        raise UserInputError(f"{folder}: holds no preprocessed unpaired {modality} cases; create them with: {cmd}")
    m = read_manifest(folder)
    if m is not None:
        expected = geometry_hash(trainer.plans_manager.plans, trainer.configuration_name,
                                 m.get("modality", DEFAULT_MODALITY))
        if m.get("plans_hash") != expected:
            raise UserInputError(f"{folder}: was preprocessed for other plans geometry (spacing, transpose or "
                                 f"resampling changed since); rebuild it with: {cmd} --overwrite")

    batch_size = getattr(trainer, "batch_size", None) or trainer.configuration_manager.batch_size
    patch_size = trainer.configuration_manager.patch_size
    rotation_for_DA, do_dummy_2d_data_aug, initial_patch_size, mirror_axes = \
        trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    transforms = trainer.get_training_transforms(
        patch_size, rotation_for_DA, None, mirror_axes, do_dummy_2d_data_aug,
        use_mask_for_norm=None, is_cascaded=False,
        foreground_labels=trainer.label_manager.foreground_labels, regions=None, ignore_label=None)
    return make_unpaired_augmenter(folder, batch_size, patch_size, initial_patch_size, transforms,
                                   num_processes=num_processes, pin_memory=trainer.device.type == "cuda",
                                   seeds=seeds)
