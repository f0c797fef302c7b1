// The C ABI header (include/kvcrush.h) as a module the Swift implementation (KVCrushC) imports, so
// the two cannot disagree on a type. No code: the functions are defined by KVCrushC (@_cdecl).
