"""File I/O of the product: manifests and images, condition maps (OpenPose drawing, detectors), captions,
the files an edit writes, run records and reports."""
