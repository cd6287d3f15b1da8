# outpost_component(NAME DIR LIBS ...): a static library of every .cc in DIR
# except *_test.cc, *_fuzz.cc and *_main.cc; each *_test.cc becomes its own
# GoogleTest binary linked against the library. Keeps the build listing in
# step with the folders without hand-kept file lists.
function(outpost_component name)
  cmake_parse_arguments(C "" "" "LIBS;TEST_LIBS" ${ARGN})
  file(GLOB _all CONFIGURE_DEPENDS "${CMAKE_CURRENT_SOURCE_DIR}/*.cc")
  set(_lib_srcs "")
  set(_test_srcs "")
  foreach(f IN LISTS _all)
    if(f MATCHES "_test\\.cc$")
      list(APPEND _test_srcs "${f}")
    elseif(NOT f MATCHES "_(fuzz|main)\\.cc$")
      list(APPEND _lib_srcs "${f}")
    endif()
  endforeach()
  add_library(${name} STATIC ${_lib_srcs})
  target_link_libraries(${name} PUBLIC ${C_LIBS})
  foreach(t IN LISTS _test_srcs)
    get_filename_component(_tn "${t}" NAME_WE)
    outpost_test(${_tn} SOURCES "${t}" LIBS ${name} ${C_TEST_LIBS})
  endforeach()
endfunction()
