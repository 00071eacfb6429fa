"""Ask a vision-language model about what your camera sees."""
