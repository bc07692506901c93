"""ortho-node: the AI node that hospitals plug into their PACS for musculoskeletal imaging."""

__version__ = "0.1.0"
