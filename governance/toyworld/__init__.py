"""The toy world: synthetic images with exactly known concepts (`grammar`, `render`), exact
classifiers (`classify`), a small real SD pipeline (`model`) trained by the project (`train`,
weights committed under `weights/`), loaded through the one loader (`loading`, `paths`), and its
own text-to-image quality (`quality`)."""
