"""What it means: llama.cpp's memory model, attribution, forecast, advice, what-if.
Pure Python; never imports Qt."""
