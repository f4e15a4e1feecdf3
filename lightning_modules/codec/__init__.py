"""Real compression: the codec, the .dcvic container and legacy reader, file-level compress/decompress."""
