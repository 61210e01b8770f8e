# Warning and sanitizer flags shared by every stallmon target.
# Targets opt in with stallmon_target_defaults(<target>), so imported third-party code is untouched.
add_library(stallmon_compile_options INTERFACE)
add_library(stallmon::compile_options ALIAS stallmon_compile_options)
target_compile_options(stallmon_compile_options INTERFACE -Wall -Wextra -Wshadow -Wnon-virtual-dtor
  -Wno-missing-field-initializers)
if(STALLMON_WERROR)
  target_compile_options(stallmon_compile_options INTERFACE -Werror)
endif()
if(NOT STALLMON_DEBUG_INFO)
  # After the build type's -g on the command line: the last -g option wins.
  add_compile_options(-g0)
endif()
if(STALLMON_SANITIZE)
  # Applied globally so that every object (tests, benchmarks, generated code) agrees on the ABI.
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
endif()

function(stallmon_target_defaults target)
  target_link_libraries(${target} PRIVATE stallmon::compile_options)
endfunction()
