// liboutpost_pipelines.so's own translation unit: the entry point lives in
// the pipeline archive (pipeline_set_module.cc), which the module links whole.
