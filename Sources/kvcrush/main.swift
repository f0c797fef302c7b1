import KVCrush
print("kvcrush")
