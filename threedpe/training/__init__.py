"""Training the editor, as EG3D's ``training/``: the objective, the dataset layout, the sample library, the data
generator and the trainer (torchrun commands), and customisation (fine-tuning the editor to a new edit)."""
