# Finds ONNX Runtime and provides the imported target onnxruntime::onnxruntime.
# Order: ONNXRUNTIME_ROOT (an official release folder), a system install
# (CMake config package), then third_party/onnxruntime assembled by
# scripts/deps.sh. Binaries get the library's folder in their RUNPATH, so
# they run without LD_LIBRARY_PATH.

set(ONNXRUNTIME_ROOT "$ENV{ONNXRUNTIME_ROOT}" CACHE PATH "ONNX Runtime release folder")

function(_outpost_ort_from_root root)
  find_path(_ort_inc onnxruntime_cxx_api.h
    PATHS "${root}/include" "${root}/include/onnxruntime" NO_DEFAULT_PATH)
  find_library(_ort_lib NAMES onnxruntime PATHS "${root}/lib" "${root}/lib64" NO_DEFAULT_PATH)
  if(NOT _ort_inc OR NOT _ort_lib)
    message(FATAL_ERROR "ONNX Runtime not usable under ${root}: need include/onnxruntime_cxx_api.h "
                        "and lib/libonnxruntime.so (run scripts/deps.sh)")
  endif()
  add_library(onnxruntime::onnxruntime SHARED IMPORTED GLOBAL)
  set_target_properties(onnxruntime::onnxruntime PROPERTIES
    IMPORTED_LOCATION "${_ort_lib}"
    INTERFACE_INCLUDE_DIRECTORIES "${_ort_inc}")
  get_filename_component(_dir "${_ort_lib}" DIRECTORY)
  set(OUTPOST_ORT_LIBDIR "${_dir}" PARENT_SCOPE)
  message(STATUS "ONNX Runtime: ${_ort_lib}")
endfunction()

if(ONNXRUNTIME_ROOT)
  _outpost_ort_from_root("${ONNXRUNTIME_ROOT}")
else()
  find_package(onnxruntime CONFIG QUIET)
  if(TARGET onnxruntime::onnxruntime)
    message(STATUS "ONNX Runtime: system install (${onnxruntime_DIR})")
  elseif(EXISTS "${PROJECT_SOURCE_DIR}/third_party/onnxruntime/lib")
    _outpost_ort_from_root("${PROJECT_SOURCE_DIR}/third_party/onnxruntime")
  else()
    message(FATAL_ERROR "ONNX Runtime not found: run scripts/deps.sh, or set ONNXRUNTIME_ROOT")
  endif()
endif()

if(OUTPOST_ORT_LIBDIR)
  list(APPEND CMAKE_BUILD_RPATH "${OUTPOST_ORT_LIBDIR}")
  list(APPEND CMAKE_INSTALL_RPATH "${OUTPOST_ORT_LIBDIR}")
endif()
