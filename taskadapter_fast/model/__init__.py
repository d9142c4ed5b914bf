"""nn.Modules of Task-Adapter++: backbone wrapper, adapters, text tower, alignment, metrics, full model."""
