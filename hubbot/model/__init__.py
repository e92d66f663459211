"""What hubbot knows of a model from its files alone: tensor names and config.json (arch), and
the safetensors format (format)."""
