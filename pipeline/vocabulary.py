"""The synthetic catalogue's words: the demo's titles (pipeline.synth) and the tokenizers trained
for built encoders (pipeline.build_encoder) share them, so a built tokenizer knows the titles."""

# Theme vocabularies, one per category (a seeded permutation picks which ones are used).
THEMES: list[list[str]] = [
    ["telescope", "lens", "eyepiece", "refractor", "astronomy", "tripod", "star", "planet", "mount", "optics"],
    ["beaker", "flask", "glassware", "borosilicate", "graduated", "cylinder", "pipette", "burette", "laboratory", "erlenmeyer"],
    ["soldering", "iron", "solder", "flux", "tin", "wick", "desoldering", "station", "tip", "rosin"],
    ["microscope", "slide", "specimen", "magnification", "objective", "coverslip", "biology", "stage", "illuminator", "stain"],
    ["drill", "bit", "cobalt", "twist", "masonry", "chuck", "shank", "boring", "auger", "countersink"],
    ["glove", "nitrile", "disposable", "latex", "powder", "exam", "protective", "hand", "sterile", "cuff"],
    ["multimeter", "voltage", "probe", "tester", "ammeter", "resistance", "digital", "current", "circuit", "clamp"],
    ["filament", "printer", "nozzle", "extruder", "spool", "plastic", "printing", "hotend", "bed", "layer"],
    ["pipe", "plumbing", "valve", "faucet", "fitting", "brass", "elbow", "coupling", "threaded", "hose"],
    ["bearing", "ball", "roller", "axle", "bushing", "pulley", "shaft", "sprocket", "gear", "hub"],
    ["adhesive", "tape", "glue", "epoxy", "sealant", "duct", "masking", "sticky", "bond", "silicone"],
    ["thermometer", "temperature", "humidity", "hygrometer", "gauge", "weather", "barometer", "sensor", "climate", "forecast"],
    ["magnet", "neodymium", "magnetic", "rare", "earth", "disc", "pull", "fridge", "strong", "attraction"],
    ["screw", "bolt", "nut", "washer", "fastener", "hex", "socket", "stainless", "assortment", "rivet"],
    ["led", "bulb", "lamp", "lighting", "lumen", "flashlight", "lantern", "bright", "beam", "dimmable"],
    ["respirator", "mask", "dust", "cartridge", "filter", "breathing", "particulate", "safety", "vapor", "exhaust"],
    ["scale", "balance", "weighing", "gram", "calibration", "precision", "jewelry", "kitchen", "weight", "tare"],
    ["battery", "charger", "lithium", "rechargeable", "cell", "alkaline", "volt", "power", "charging", "capacity"],
    ["sandpaper", "abrasive", "grit", "sanding", "polishing", "emery", "buffing", "wheel", "grinding", "finishing"],
    ["label", "barcode", "sticker", "thermal", "paper", "roll", "shipping", "printable", "address", "receipt"],
    ["cable", "wire", "copper", "insulated", "harness", "stranded", "cord", "extension", "connector", "terminal"],
    ["pump", "water", "aquarium", "submersible", "fountain", "flow", "tubing", "irrigation", "pond", "siphon"],
    ["knife", "blade", "utility", "cutter", "razor", "scalpel", "box", "folding", "sharp", "retractable"],
    ["caliper", "micrometer", "ruler", "measuring", "vernier", "depth", "dial", "inch", "metric", "indicator"],
]

# Shared pools: generic words carry no category signal, so the encoder must use theme words.
GENERIC = ["Pro", "Set", "Kit", "Heavy Duty", "Premium", "Professional", "Replacement", "Portable",
           "Industrial", "Mini", "Compact", "Deluxe", "Universal", "Durable", "Multi-Purpose",
           "Black", "Blue", "Red", "Silver", "Pack of 2", "Pack of 6", "Pack of 10", "Pack of 50"]
