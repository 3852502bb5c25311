"""Input and output: images, manifests and embeddings files. Imports nothing else of faceaudit but errors."""
