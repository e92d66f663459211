"""What users write, with no I/O: merge recipes, mixture-of-experts recipes, search templates,
soup and search requests, the form's YAML writer and chat templates, every field checked."""
