"""mmtutor: a small, complete library for learning text-to-image generation."""
