"""Training package: phantoms data, DINO self-distillation, task heads, export to node bundles."""
